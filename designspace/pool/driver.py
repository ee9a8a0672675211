"""Run many trials in worker processes and record each one in the store as it finishes.

Workers run :func:`~designspace.pool.worker.run_trial`, which never raises; only the driver writes
the store, one committed record per finished trial, so killing the driver loses nothing already
recorded and a rerun of the same specs runs only the missing ones. A trial whose worker died is
*lost* (the infrastructure's failure, not the design's): it is retried within the call, alone, up to
``retries`` times, and again on the next run; every other status is a result and is never rerun.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import sys
import traceback
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone

from ..errors import DesignSpaceError, invalid
from ..pack import available_memory_mb, group_packs
from ..store import TrialStore
from ..trial import Status, TrialRecord, TrialSpec, lost
from .engines import BACKENDS, Engine, engine, is_worker_death, resources
from .scorer import Scorer, TrainScorer
from .worker import run_pack_trials, run_trial


class _PoolBroken(Exception):
    """The pool failed mid-pass (a worker died): which units (a spec, or a pack's specs) may have caused
    it, which never started."""

    def __init__(self, error: BaseException, suspects: list, unstarted: list):
        super().__init__(str(error))
        self.error, self.suspects, self.unstarted = error, suspects, unstarted


def _run_pass(eng: Engine, threads: int, units: list[tuple[TrialSpec, ...]], scorer) -> Iterator[TrialRecord]:
    """Yield records as trials finish; on a worker death raise :class:`_PoolBroken`. A unit is one
    spec, or the specs of a pack, scored in one worker call."""
    from joblib import Parallel, delayed

    pulled: dict[int, tuple[TrialSpec, ...]] = {}  # handed to joblib, no record back yet
    n_pulled = 0
    driver = (os.getpid(), socket.gethostname()) if eng.local else (None, None)

    def tasks():
        nonlocal n_pulled
        for i, unit in enumerate(units):
            pulled[i] = unit
            n_pulled = i + 1
            if len(unit) == 1:
                yield delayed(run_trial)(i, unit[0], threads, scorer, *driver)
            else:
                yield delayed(run_pack_trials)(i, list(unit), threads, scorer, *driver)

    n_jobs = eng.workers
    # batch_size=1 and pre_dispatch=n_jobs: few trials in flight, so a dead worker implicates few.
    kwargs = {"n_jobs": n_jobs or -1, "batch_size": 1, "pre_dispatch": str(max(n_jobs, 1)), **eng.options()}
    try:
        if eng.streams:
            for i, done in Parallel(return_as="generator_unordered", **kwargs)(tasks()):
                pulled.pop(i)
                yield from done if isinstance(done, list) else [done]
        else:
            # Waves of n_jobs trials through one pool (the context manager keeps its workers).
            with Parallel(return_as="list", **kwargs) as parallel:
                todo = tasks()
                while wave := list(itertools.islice(todo, max(n_jobs, 1))):
                    for i, done in parallel(wave):
                        pulled.pop(i)
                        yield from done if isinstance(done, list) else [done]
    except Exception as e:
        if not is_worker_death(e):
            raise  # run_trial never raises: anything else is a bug or a broken cluster, not a trial's fault
        raise _PoolBroken(e, list(pulled.values()), units[n_pulled:]) from e


def _lost_record(spec: TrialSpec, error: BaseException) -> TrialRecord:
    first = " ".join(str(error).split())  # one line, with e.g. the exit codes of dead workers
    return lost(spec, f"worker died while running this trial: {type(error).__name__}: {first}",
                traceback="".join(traceback.format_exception(error)))


class Progress:
    """A tqdm bar on stderr: trials done, not ok, lost; a line every 30 s when stderr is a log file."""

    def __init__(self, total: int, label: str, enabled: bool):
        from tqdm.auto import tqdm

        tty = sys.stderr.isatty()
        self.bar = tqdm(total=total, desc=label, unit="trial", file=sys.stderr, disable=not enabled,
                        mininterval=0.5 if tty else 30.0, dynamic_ncols=True, leave=True)
        self.counts = {"not ok": 0, "lost": 0}

    def update(self, record: TrialRecord) -> None:
        if record.status is Status.LOST:
            self.counts["lost"] += 1
        else:
            self.counts["not ok"] += record.status is not Status.OK
            self.bar.update(1)
        self.bar.set_postfix(self.counts, refresh=False)

    def log(self, message: str) -> None:
        self.bar.write(message, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


@contextmanager
def _sigterm_as_interrupt():
    """SIGTERM stops the driver the way Ctrl-C does: workers are stopped, the CLI says how to resume."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    before = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def evaluate(
    specs: list[TrialSpec],
    store: TrialStore,
    backend: str = "loky",
    n_jobs: int | None = None,
    threads: int | None = None,
    retries: int = 1,
    address: str | None = None,
    progress: bool = True,
    scorer: Scorer | None = None,
    label: str = "trials",
    pack: int = 1,
) -> list[TrialRecord]:
    """Run the specs that have no final record in ``store``; return the record of every spec, in spec
    order (a trial still lost after its retries comes back with status ``lost``, so callers can say
    which; a spec with no record at all is left out).

    ``backend``: ``loky`` (worker processes here), ``sequential`` (in this process), ``dask``
    (``address`` of a scheduler, or None for a LocalCluster of ``n_jobs`` one-thread workers),
    ``ray`` (``address`` of a cluster, or None to start one). ``n_jobs`` workers each use
    ``threads`` torch threads; by default one single-threaded worker per local core. ``scorer``:
    what a worker does with a spec (default: train it).

    ``pack``: up to this many specs that may share a pass (``designspace.pack.pack_key``: same
    backbone, role map, task, data, data seed, evaluation split and data/schedule part of the regime)
    are trained together in one worker call (``train_pack.run_pack``); 1 trains each alone. Records,
    resume and retries are per spec as without packs; a worker that dies under a pack loses every
    spec of it, each then retried alone. On local workers, no more packs run at once than memory
    holds (the scorer's ``memory_mb`` estimate against the memory available now).
    """
    if backend not in BACKENDS:
        raise invalid("backend", backend, BACKENDS)
    if address is not None and backend not in ("dask", "ray"):
        raise invalid("address", address, "None unless backend is 'dask' or 'ray'")
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise invalid("retries", retries, "an integer >= 0")
    if not isinstance(pack, int) or isinstance(pack, bool) or pack < 1:
        raise invalid("pack", pack, "an integer >= 1 (1: every design trains alone)")
    n_jobs, threads = resources(backend, n_jobs, threads, remote=address is not None)
    scorer = scorer or TrainScorer()
    unique = list({s.key: s for s in specs}.values())
    store.open()  # refuses a corrupt or foreign file before any work
    statuses = store.statuses()
    todo = [s for s in unique if s.key not in statuses or not statuses[s.key].final]
    if todo:
        units = [tuple(p) for p in group_packs(todo, pack)]
        if backend != "sequential" and address is None:  # workers on this host share its memory
            n_jobs = packs_that_fit(units, n_jobs, scorer)
        bar = Progress(len(todo), label, progress)
        session = _session_start(label, todo, backend, n_jobs, threads)
        store.log_session(session)
        try:
            with _sigterm_as_interrupt(), engine(backend, n_jobs, threads, address) as eng:
                _drive(units, store, eng, threads, 1 + retries, bar, scorer)
        finally:
            try:
                _session_end(session, store, todo)  # first: closing the bar may fail on a closed pipe
            finally:
                bar.close()
    found = {r.key: r for r in store.records([s.key for s in unique])}
    return [found[s.key] for s in specs if s.key in found]


def _session_start(label: str, todo: list[TrialSpec], backend: str, n_jobs: int, threads: int) -> dict:
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return {"id": uuid.uuid4().hex, "label": label, "host": socket.gethostname(),
            "cores": os.cpu_count(), "started": started, "load_start": [round(x, 2) for x in os.getloadavg()],
            "todo": len(todo), "backend": backend, "n_jobs": n_jobs, "threads": threads}


def _session_end(session: dict, store: TrialStore, todo: list[TrialSpec]) -> None:
    """Close the session's entry; a store that can no longer be written keeps its start entry."""
    session.update(ended=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   load_end=[round(x, 2) for x in os.getloadavg()])
    try:
        statuses = store.statuses()
        session["trained"] = sum(s.key in statuses and statuses[s.key].final for s in todo)
        store.log_session(session)
    except DesignSpaceError:
        pass


def packs_that_fit(units: list[tuple], n_jobs: int, scorer, available_mb: float | None = None) -> int:
    """``n_jobs``, or fewer so that the largest pack times the workers fits the memory available now
    (90 % of it). Only packs are counted (one design per worker is today's default); a scorer without
    a ``memory_mb`` estimate, or memory that cannot be read, leaves ``n_jobs`` as it is."""
    largest = max(units, key=len, default=())
    estimate = getattr(scorer, "memory_mb", None)
    if len(largest) < 2 or estimate is None:
        return n_jobs
    per_pack = estimate(list(largest))
    available = available_memory_mb() if available_mb is None else available_mb
    if not per_pack or available is None:
        return n_jobs
    fit = max(1, int(0.9 * available // per_pack))
    if fit < n_jobs:
        print(f"packs of {len(largest)} need ~{per_pack:,.0f} MiB each and {available:,.0f} MiB is free: "
              f"{fit} worker(s) instead of {n_jobs}", file=sys.stderr)
    return min(n_jobs, fit)


def _drive(units, store, eng, threads, max_attempts, bar, scorer) -> None:
    """Passes over the units (a spec, or a pack's specs) until each spec has a final record or has been
    lost ``max_attempts`` times.

    After a worker death the units then in flight are suspects; each is rerun alone, which names
    the culprit without charging the others for its crash. A unit that dies alone loses each of its
    specs, retried alone (a pack's culprit is then found the same way).
    """
    tries: dict[str, int] = {}

    def finish(spec: TrialSpec, record: TrialRecord) -> list[tuple[TrialSpec, bool]]:
        store.record(record)
        bar.update(record)
        if record.status is Status.LOST:
            tries[spec.key] = tries.get(spec.key, 0) + 1
            bar.log(f"lost {spec.label or spec.design_id} ({spec.task}, seed {spec.seed}): {(record.error or '')[:160]}")
            if tries[spec.key] < max_attempts:
                return [((spec,), True)]
        return []

    queue = [(u, False) for u in units]  # (unit, run it alone)
    while queue:
        together = [u for u, alone in queue if not alone]
        groups = ([together] if together else []) + [[u] for u, alone in queue if alone]
        queue = []
        for group in groups:
            try:
                for record in _run_pass(eng, threads, group, scorer):
                    queue += finish(record.spec, record)
            except _PoolBroken as broken:
                if not broken.suspects:
                    # The pool failed before any trial started: not a trial's fault.
                    raise broken.error from None
                queue += [(u, False) for u in broken.unstarted]
                if len(broken.suspects) == 1:
                    (unit,) = broken.suspects
                    for spec in unit:
                        queue += finish(spec, _lost_record(spec, broken.error))
                else:
                    queue += [(u, True) for u in broken.suspects]
