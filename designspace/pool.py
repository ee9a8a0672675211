"""Run many trials in worker processes and record each one in the store as it finishes.

The driver hands :class:`TrialSpec` s to a joblib backend (``loky`` processes on this machine, a
``dask`` or ``ray`` cluster, or ``sequential`` in-process for tests and debugging). Workers run
:func:`run_trial`, which never raises; only the driver writes the store, one committed row per
finished trial, so killing the driver loses nothing already recorded and a rerun of the same specs
runs only the missing ones.

CPU budget: by default ``n_jobs * threads <= cpu_count`` with one single-threaded worker per core
(here 2 x 1). ``benchmarks/pool_workers.py`` compares 1 x 2 with 2 x 1 in designs per hour: on this
2-core machine shared with other jobs (load 10-13), 2 x 1 ran 4.5-7 times as many designs per
hour, a 2-thread trial taking ~3x as long as a 1-thread one; single-threaded training was also
faster in ``benchmarks/train_throughput.py``. Pass ``n_jobs=1, threads=2`` for the other layout.

Engines: ``loky`` streams results as they finish, even with one worker (which still runs in its
own process: joblib alone would run it in the driver). ``dask`` streams too. Ray's joblib
backend only returns whole lists, so ray runs trials in waves of ``n_jobs`` and records each
wave when its slowest trial ends.

Test hook: a spec whose task is :data:`CRASH_TASK` kills its worker process with ``os._exit(1)``,
the way a segfault or the OOM killer would. Tests use it to check that the pool survives; it must
never reach ``backend='sequential'``, where the worker is the driver.
"""

from __future__ import annotations

import itertools
import os
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .errors import DesignSpaceError, invalid
from .plan import compile
from .space import Design
from .store import TrialStore
from .tasks import get_task
from .train import Regime

if TYPE_CHECKING:
    from .backbones import Backbone

BACKENDS = ("loky", "sequential", "dask", "ray")
CRASH_TASK = "__crash__"
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class TrialSpec:
    """One trial to run: a design on a task with a seed, in a stage of an experiment.

    ``key`` identifies it in the store. ``data_seed`` picks the training subset and batch order
    (designs compared within a stage share it: common random numbers); like ``backbone`` it is
    not part of the key, so one stage must not mix data seeds or backbones for the same key.
    """

    stage: str
    design: Design
    task: str
    seed: int = 0
    data_seed: int = 0
    regime: Regime = field(default_factory=Regime)
    backbone: str = "minilm-l6"
    data_dir: str | None = None

    def __post_init__(self):
        if not isinstance(self.design, Design):
            raise invalid("spec.design", type(self.design).__name__, "a Design")
        if not isinstance(self.regime, Regime):
            raise invalid("spec.regime", type(self.regime).__name__, "a Regime")
        for name in ("seed", "data_seed"):
            if not isinstance(getattr(self, name), int):
                raise invalid(f"spec.{name}", getattr(self, name), "an integer")
        try:  # 'SST-2' and 'sst2' are one key; an unknown task fails in run_trial, as a trial
            object.__setattr__(self, "task", get_task(self.task).name)
        except DesignSpaceError:
            pass
        if self.data_dir is not None:
            object.__setattr__(self, "data_dir", str(self.data_dir))

    @property
    def key(self) -> tuple[str, str, str, int, str]:
        return (self.stage, self.design.id, self.task, self.seed, self.regime.id)

    def __hash__(self) -> int:
        return hash((self.key, self.data_seed, self.backbone, self.data_dir))

    def to_dict(self) -> dict:
        return {
            "stage": self.stage,
            "design": self.design.to_dict(),
            "task": self.task,
            "seed": self.seed,
            "data_seed": self.data_seed,
            "regime": self.regime.to_dict(),
            "backbone": self.backbone,
            "data_dir": self.data_dir,
        }

    @classmethod
    def from_dict(cls, d: dict) -> TrialSpec:
        d = dict(d)
        known = set(cls.__dataclass_fields__)
        for k in d:
            if k not in known:
                raise invalid(f"spec.{k}", d[k], "fields " + ", ".join(sorted(known)))
        d["design"] = Design.from_dict(d["design"])
        d["regime"] = Regime.from_dict(d.get("regime"))
        return cls(**d)


# -- in a worker -----------------------------------------------------------------------------------

# One backbone per name per process: loky and dask workers live across trials, so a stage pays
# the load (seconds for MiniLM, more for bigger models) once per worker, not once per trial.
_BACKBONES: dict[str, Backbone] = {}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _backbone(name: str) -> Backbone:
    if name not in _BACKBONES:
        from .backbones import load_backbone

        _BACKBONES[name] = load_backbone(name)
    return _BACKBONES[name]


def _is_clean(backbone: Backbone) -> bool:
    """No hook or trainable weight left by a trial (a failed attach may not undo its hooks)."""
    for m in backbone.model.modules():
        if m._forward_hooks or m._forward_pre_hooks:
            return False
    return not any(p.requires_grad for p in backbone.model.parameters())


def _base_row(spec: TrialSpec) -> dict[str, Any]:
    """The columns a row takes from its spec alone (the key, the design and the regime)."""
    return {
        "stage": spec.stage,
        "design_id": spec.design.id,
        "design": spec.design.to_dict(),
        "task": spec.task,
        "seed": spec.seed,
        "regime_id": spec.regime.id,
        "regime": spec.regime.to_dict(),
    }


def run_trial(spec: TrialSpec) -> dict[str, Any]:
    """Run one trial and return its row for :meth:`TrialStore.record` (without ``experiment``).

    Never raises for a trial's own failure: a design that does not fit the budget is
    ``infeasible``, a NaN/inf loss ``diverged``, any exception ``failed`` with its traceback.
    """
    row = {**_base_row(spec), "worker": f"{socket.gethostname()}:{os.getpid()}", "started_at": _now()}
    if spec.task == CRASH_TASK:
        os._exit(1)
    try:
        from .train import train_design, versions

        # The store has no columns for these; they belong with "what produced this number".
        row["versions"] = {**versions(), "backbone": spec.backbone, "data_seed": spec.data_seed}
        backbone = _backbone(spec.backbone)
        try:
            try:
                plan = compile(spec.design, backbone)
            except DesignSpaceError as e:
                row.update(status="infeasible", error=str(e))
            else:
                r = train_design(
                    plan,
                    backbone,
                    spec.task,
                    regime=spec.regime,
                    seed=spec.seed,
                    data_seed=spec.data_seed,
                    data_dir=spec.data_dir,
                )
                row.update(
                    status=r.status,
                    metrics={k: float(v) for k, v in r.metrics.items()},
                    score=r.score,
                    trainable_params=r.trainable_params,
                    plan_params=r.plan_params,
                    seconds_train=r.seconds_train,
                    seconds_eval=r.seconds_eval,
                    peak_mem_mb=r.peak_mem_mb,
                    tokens=r.tokens,
                    error=r.error,
                    traceback=r.traceback,
                )
        finally:
            if not _is_clean(backbone):  # the next trial must not train on top of this one's modules
                _BACKBONES.pop(spec.backbone, None)
    except Exception as e:
        row.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
    row["ended_at"] = _now()
    return row


def _set_threads(threads: int) -> None:
    os.environ.update({v: str(threads) for v in _THREAD_VARS})  # for libraries loaded later
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _work(index: int, spec: TrialSpec, threads: int) -> tuple[int, dict]:
    _set_threads(threads)
    return index, run_trial(spec)


# -- in the driver ---------------------------------------------------------------------------------


def _resources(backend: str, n_jobs: int | None, threads: int | None, remote: bool) -> tuple[int, int]:
    """(workers, threads per worker); the defaults keep workers * threads <= the local cores."""
    from joblib import cpu_count

    for name, v in (("n_jobs", n_jobs), ("threads", threads)):
        if v is not None and (not isinstance(v, int) or v < 1):
            raise invalid(name, v, "a positive integer or None (default)")
    cores = cpu_count()
    if backend == "sequential":
        if n_jobs not in (None, 1):
            raise invalid("n_jobs", n_jobs, "1 or None with backend='sequential'")
        return 1, threads or cores
    if remote:  # a cluster's cores are not ours to count; n_jobs None = all its worker threads
        return n_jobs or 0, threads or 1
    if n_jobs is None:
        # One single-threaded worker per core: torch's intra-op threads scale poorly on the
        # small matrices of brief trials (benchmarks/pool_workers.py: 2 x 1 beat 1 x 2 by 4.5-7x).
        n_jobs = max(1, cores // threads) if threads else cores
    return n_jobs, threads or max(1, cores // n_jobs)


def _loky_processes(threads: int):
    """joblib's loky backend, except that a single worker is a process too, not the caller.

    joblib runs ``n_jobs=1`` in the calling process; we want the default 1 x all-cores worker
    isolated, so that a trial that crashes its process (segfault, OOM killer) is recorded as
    failed instead of killing the driver at the same trial on every rerun.
    """
    from joblib._parallel_backends import LokyBackend
    from joblib.executor import get_memmapping_executor

    class ProcessLoky(LokyBackend):
        def configure(self, n_jobs=1, parallel=None, prefer=None, require=None, **kwargs):
            # effective_n_jobs(2) == 1 where processes are not allowed (daemon, non-main thread).
            if n_jobs != 1 or self.effective_n_jobs(2) == 1:
                return super().configure(n_jobs, parallel, prefer, require, **kwargs)
            kwargs = {**self.backend_kwargs, **kwargs}
            timeout = kwargs.pop("idle_worker_timeout", None) or 300
            self._workers = get_memmapping_executor(
                1, timeout=timeout, env=self._prepare_worker_env(n_jobs=1), context_id=parallel._id, **kwargs
            )
            self.parallel = parallel
            # Parallel.__call__ runs anything reporting 1 worker in the caller, whatever the backend.
            # Reporting 2 only affects pre_dispatch expressions; _run_pass passes a plain number.
            return 2

    return ProcessLoky(inner_max_num_threads=threads)


@dataclass
class _Engine:
    """How to build a ``Parallel`` for one pass: extra arguments (fresh each time), worker count."""

    options: Callable[[], dict]
    workers: int
    streams: bool = True  # False: the backend returns a batch's results only when all are done


@contextmanager
def _engine(backend: str, n_jobs: int, threads: int, address: str | None) -> Iterator[_Engine]:
    """Set up ``backend`` for the whole call (a dask or ray cluster is started once, if asked)."""
    from joblib import parallel_config

    if backend == "sequential":
        import torch

        # The "worker" is this process: leave its thread settings as they were.
        before = torch.get_num_threads(), {v: os.environ.get(v) for v in _THREAD_VARS}
        try:
            yield _Engine(lambda: {"backend": "sequential"}, 1)
        finally:
            torch.set_num_threads(before[0])
            for var, value in before[1].items():
                if value is None:
                    os.environ.pop(var, None)
                else:
                    os.environ[var] = value
    elif backend == "loky":
        yield _Engine(lambda: {"backend": _loky_processes(threads)}, n_jobs)
    elif backend == "dask":
        from dask.distributed import Client, LocalCluster

        cluster = None
        if address is None:
            cluster = LocalCluster(
                n_workers=n_jobs, threads_per_worker=1, processes=True, dashboard_address=None
            )
        client = Client(address or cluster)
        try:
            # Parallel(backend="dask") would hand joblib's nesting_level to client.submit as a task
            # argument (joblib 1.5-1.6); the backend set by parallel_config is built correctly.
            with parallel_config(backend="dask"):
                yield _Engine(lambda: {}, n_jobs or sum(client.nthreads().values()))
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    elif backend == "ray":
        import ray
        from ray.util.joblib import register_ray

        register_ray()
        started = not ray.is_initialized()
        if started:
            local = {} if address else {"num_cpus": n_jobs * threads, "include_dashboard": False}
            ray.init(address=address, log_to_driver=False, **local)
        if not n_jobs:
            n_jobs = max(1, int(ray.cluster_resources().get("CPU", 1)) // threads)
        try:
            with parallel_config(backend="ray", ray_remote_args={"num_cpus": threads}):
                # Ray's joblib backend is a multiprocessing pool: no generators, only whole lists.
                yield _Engine(lambda: {}, n_jobs, streams=False)
        finally:
            if started:
                ray.shutdown()
    else:
        raise invalid("backend", backend, BACKENDS)


# What engines raise when a worker process dies under a task (segfault, OOM killer, os._exit):
# loky, concurrent.futures, dask.distributed, ray. Matched by name: the engines are optional imports.
_WORKER_DEATHS = {
    "TerminatedWorkerError",
    "BrokenExecutor",
    "KilledWorker",
    "RayActorError",
    "WorkerCrashedError",
}


def _is_worker_death(error: BaseException | None) -> bool:
    while error is not None:
        if any(c.__name__ in _WORKER_DEATHS for c in type(error).__mro__):
            return True
        error = error.__cause__
    return False


class _PoolBroken(Exception):
    """The pool failed mid-pass (a worker died): which specs may have caused it, which never started."""

    def __init__(self, error: BaseException, suspects: list, unstarted: list):
        super().__init__(str(error))
        self.error, self.suspects, self.unstarted = error, suspects, unstarted


def _run_pass(engine: _Engine, threads: int, specs: list[TrialSpec]) -> Iterator[tuple[TrialSpec, dict]]:
    """Yield (spec, row) as trials finish; on a worker death raise :class:`_PoolBroken`."""
    from joblib import Parallel, delayed

    pulled: dict[int, TrialSpec] = {}  # handed to joblib, no row back yet
    n_pulled = 0

    def tasks():
        nonlocal n_pulled
        for i, spec in enumerate(specs):
            pulled[i] = spec
            n_pulled = i + 1
            yield delayed(_work)(i, spec, threads)

    n_jobs = engine.workers
    # batch_size=1 and pre_dispatch=n_jobs: few trials in flight, so a dead worker implicates few.
    kwargs = {
        "n_jobs": n_jobs or -1,
        "batch_size": 1,
        "pre_dispatch": str(max(n_jobs, 1)),
        **engine.options(),
    }
    try:
        if engine.streams:
            yield from (
                (pulled.pop(i), row)
                for i, row in Parallel(return_as="generator_unordered", **kwargs)(tasks())
            )
        else:
            # Waves of n_jobs trials through one pool (the context manager keeps its workers).
            with Parallel(return_as="list", **kwargs) as parallel:
                todo = tasks()
                while wave := list(itertools.islice(todo, max(n_jobs, 1))):
                    yield from ((pulled.pop(i), row) for i, row in parallel(wave))
    except Exception as e:
        if not _is_worker_death(e):
            raise  # run_trial never raises: anything else is a bug or a broken cluster, not a trial's fault
        raise _PoolBroken(e, list(pulled.values()), specs[n_pulled:]) from e


def _lost_row(spec: TrialSpec, error: BaseException) -> dict[str, Any]:
    first = " ".join(str(error).split())  # one line, with e.g. the exit codes of dead workers
    return {
        **_base_row(spec),
        "status": "failed",
        "error": f"worker died while running this trial: {type(error).__name__}: {first}",
        "traceback": "".join(traceback.format_exception(error)),
        "ended_at": _now(),
    }


class _Progress:
    """One line on stderr: done/failed/total, elapsed, ETA from the mean trial time over workers."""

    def __init__(self, total: int, workers: int, label: str, enabled: bool):
        self.total, self.workers, self.label, self.enabled = total, max(workers, 1), label, enabled
        self.status: dict[tuple, str] = {}
        self.seconds: list[float] = []
        self.t0 = self.last = time.monotonic()
        self.tty = enabled and sys.stderr.isatty()
        self.printed = ""
        self.show()

    def update(self, key: tuple, row: dict) -> None:
        self.status[key] = row["status"]
        if row.get("started_at") and row.get("ended_at"):
            span = datetime.fromisoformat(row["ended_at"]) - datetime.fromisoformat(row["started_at"])
            self.seconds.append(span.total_seconds())
        self.show()

    def show(self, final: bool = False) -> None:
        now = time.monotonic()
        # Not a terminal (a log file): a line every 30 s, not one per trial.
        if not self.enabled or not (self.tty or final or now - self.last >= 30):
            return
        failed = sum(s == "failed" for s in self.status.values())
        done = len(self.status) - failed
        left = self.total - len(self.status)
        eta = "?" if not self.seconds else _clock(left * sum(self.seconds) / len(self.seconds) / self.workers)
        counts = f"{self.label}: {done}/{self.total} done, {failed} failed"
        if final and not self.tty and counts == self.printed:
            return  # the log already ends with these counts
        self.last, self.printed = now, counts
        line = f"{counts} | {_clock(now - self.t0)} elapsed, ETA {eta}"
        print(
            ("\r" + line.ljust(78)) if self.tty else line,
            end="\n" if final or not self.tty else "",
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        self.show(final=True)


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


def evaluate(
    specs: list[TrialSpec],
    store: TrialStore,
    experiment: str = "default",
    backend: str = "loky",
    n_jobs: int | None = None,
    threads: int | None = None,
    retries: int = 1,
    address: str | None = None,
    progress: bool = True,
) -> list[dict]:
    """Run the specs not yet in ``store`` and return the store rows of all of them, in spec order.

    A key already done (ok, diverged, infeasible) is skipped, and so is a failed one that used
    its ``1 + retries`` attempts; a failed trial is retried within the call until it has. A
    worker that dies is survived: the trial it ran is recorded failed and the rest go on.
    ``backend``: ``loky`` (worker processes here), ``sequential`` (in this process), ``dask``
    (``address`` of a scheduler, or None for a LocalCluster of ``n_jobs`` one-thread workers),
    ``ray`` (``address`` of a cluster, or None to start one). ``n_jobs`` workers each use
    ``threads`` torch threads; by default one single-threaded worker per local core.
    """
    if backend not in BACKENDS:
        raise invalid("backend", backend, BACKENDS)
    if address is not None and backend not in ("dask", "ray"):
        raise invalid("address", address, "None unless backend is 'dask' or 'ray'")
    if not isinstance(retries, int) or retries < 0:
        raise invalid("retries", retries, "an integer >= 0")
    n_jobs, threads = _resources(backend, n_jobs, threads, remote=address is not None)
    specs = list(specs)
    store.open()  # refuses a corrupt or foreign file before any work
    max_attempts = 1 + retries
    stages = sorted({s.stage for s in specs})
    done = store.done_keys()
    tried = {_key(r): r["attempts"] for st in stages for r in store.trials(st, "failed")}

    todo, seen = [], set(done)
    for spec in specs:
        if spec.key not in seen and tried.get(spec.key, 0) < max_attempts:
            todo.append(spec)
        seen.add(spec.key)

    if todo:
        label = stages[0] if len(stages) == 1 else f"{len(stages)} stages"
        bar = _Progress(len(todo), n_jobs, label, progress)
        try:
            with _engine(backend, n_jobs, threads, address) as engine:
                bar.workers = max(engine.workers, 1)
                _drive(todo, store, experiment, engine, threads, max_attempts, bar)
        finally:
            bar.close()

    by_key = {_key(r): r for st in stages for r in store.trials(st)}
    return [by_key[s.key] for s in specs]


def _key(row: dict) -> tuple:
    return (row["stage"], row["design_id"], row["task"], row["seed"], row["regime_id"])


def _drive(todo, store, experiment, engine, threads, max_attempts, bar) -> None:
    """Passes over the specs until each is done or out of attempts.

    After a worker death the trials then in flight are suspects; each is rerun alone, which
    names the culprit (charged one attempt) without charging the others for its crash.
    """

    def finish(spec: TrialSpec, row: dict) -> list[tuple[TrialSpec, bool]]:
        store.record({**row, "experiment": experiment})
        bar.update(spec.key, row)
        if row["status"] == "failed" and store.attempts(spec.key) < max_attempts:
            return [(spec, False)]
        return []

    queue = [(s, False) for s in todo]  # (spec, run it alone)
    while queue:
        together = [s for s, alone in queue if not alone]
        groups = ([together] if together else []) + [[s] for s, alone in queue if alone]
        queue = []
        for group in groups:
            try:
                for spec, row in _run_pass(engine, threads, group):
                    queue += finish(spec, row)
            except _PoolBroken as broken:
                if not broken.suspects:
                    # The pool failed before any trial started: not a trial's fault.
                    raise broken.error from None
                queue += [(s, False) for s in broken.unstarted]
                if len(broken.suspects) == 1:
                    (spec,) = broken.suspects
                    queue += [(s, True) for s, _ in finish(spec, _lost_row(spec, broken.error))]
                else:
                    queue += [(s, True) for s in broken.suspects]
