"""The engines trials run on: ``loky`` processes here, a ``dask`` or ``ray`` cluster, or ``sequential``
in-process for tests and debugging. Each is set up once per ``evaluate`` call.

CPU budget: by default ``n_jobs * threads <= cpu_count`` with one single-threaded worker per core
(here 2 x 1). ``benchmarks/pool_workers.py`` compares 1 x 2 with 2 x 1 in designs per hour: on this
2-core machine shared with other jobs (load 10-13), 2 x 1 ran 4.5-7 times as many designs per
hour, a 2-thread trial taking ~3x as long as a 1-thread one. Pass ``n_jobs=1, threads=2`` for the
other layout.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ..errors import invalid
from .worker import THREAD_VARS

BACKENDS = ("loky", "sequential", "dask", "ray")
#: joblib versions whose private LokyBackend.configure we subclass (checked at run time).
LOKY_SUBCLASS_TESTED = ((1, 4), (1, 7))


def resources(backend: str, n_jobs: int | None, threads: int | None, remote: bool) -> tuple[int, int]:
    """(workers, threads per worker); the defaults keep workers * threads <= the local cores."""
    from joblib import cpu_count

    for name, v in (("n_jobs", n_jobs), ("threads", threads)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise invalid(name, v, "a positive integer or None (default)")
    cores = cpu_count()
    if backend == "sequential":
        if n_jobs not in (None, 1):
            raise invalid("n_jobs", n_jobs, "1 or None with backend='sequential'")
        return 1, threads or cores
    if remote:  # a cluster's cores are not ours to count; n_jobs None = all its worker threads
        return n_jobs or 0, threads or 1
    if n_jobs is None:
        # One single-threaded worker per core: torch's intra-op threads scale poorly on the small
        # matrices of brief trials (benchmarks/pool_workers.py: 2 x 1 beat 1 x 2 by 4.5-7x).
        n_jobs = max(1, cores // threads) if threads else cores
    return n_jobs, threads or max(1, cores // n_jobs)


def _joblib_version() -> tuple[int, int]:
    import joblib

    major, minor = (int(x) for x in joblib.__version__.split(".")[:2])
    return major, minor


def loky_backend(threads: int):
    """joblib's loky backend, except that a single worker is a process too, not the caller.

    joblib runs ``n_jobs=1`` in the calling process; we want the one worker isolated, so that a
    trial that crashes its process (segfault, OOM killer) is recorded as lost instead of killing the
    driver at the same trial on every rerun. That needs joblib's private ``LokyBackend.configure``;
    outside the tested joblib versions we fall back to the plain backend (and say so).
    """
    from joblib._parallel_backends import LokyBackend

    low, high = LOKY_SUBCLASS_TESTED
    if not low <= _joblib_version() <= high:
        warnings.warn(f"joblib {_joblib_version()} is outside the tested range {low}..{high}: with one worker, "
                      "trials run in the driver process", stacklevel=2)
        return LokyBackend(inner_max_num_threads=threads)
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
            # Reporting 2 only affects pre_dispatch expressions; the driver passes a plain number.
            return 2

    return ProcessLoky(inner_max_num_threads=threads)


def stop_loky_workers() -> None:
    """Kill the reusable loky executor's workers now (the driver is stopping)."""
    from joblib.externals.loky import get_reusable_executor

    try:
        get_reusable_executor().shutdown(wait=False, kill_workers=True)
    except Exception:  # nothing was started, or it is already down
        pass


@dataclass
class Engine:
    """How to build a ``Parallel`` for one pass: extra arguments (fresh each time), worker count."""

    options: Callable[[], dict]
    workers: int
    streams: bool = True  # False: the backend returns a batch's results only when all are done
    local: bool = True  # workers run on this host (their watchdog can see the driver)


@contextmanager
def engine(backend: str, n_jobs: int, threads: int, address: str | None) -> Iterator[Engine]:
    """Set up ``backend`` for the whole call (a dask or ray cluster is started once, if asked)."""
    from joblib import parallel_config

    if backend == "sequential":
        import torch

        # The "worker" is this process: leave its thread settings as they were.
        before = torch.get_num_threads(), {v: os.environ.get(v) for v in THREAD_VARS}
        try:
            yield Engine(lambda: {"backend": "sequential"}, 1)
        finally:
            torch.set_num_threads(before[0])
            for var, value in before[1].items():
                if value is None:
                    os.environ.pop(var, None)
                else:
                    os.environ[var] = value
    elif backend == "loky":
        try:
            yield Engine(lambda: {"backend": loky_backend(threads)}, n_jobs)
        except BaseException:
            stop_loky_workers()  # interrupted or failed: no worker trains on for nobody
            raise
    elif backend == "dask":
        from dask.distributed import Client, LocalCluster

        cluster = None
        if address is None:
            cluster = LocalCluster(n_workers=n_jobs, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(address or cluster)
        try:
            # Parallel(backend="dask") would hand joblib's nesting_level to client.submit as a task
            # argument (joblib 1.5-1.6); the backend set by parallel_config is built correctly.
            with parallel_config(backend="dask"):
                yield Engine(lambda: {}, n_jobs or sum(client.nthreads().values()), local=address is None)
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
                yield Engine(lambda: {}, n_jobs, streams=False, local=address is None)
        finally:
            if started:
                ray.shutdown()
    else:
        raise invalid("backend", backend, BACKENDS)


# What engines raise when a worker process dies under a task (segfault, OOM killer, os._exit):
# loky, concurrent.futures, dask.distributed, ray. Matched by name: the engines are optional imports.
WORKER_DEATHS = {"TerminatedWorkerError", "BrokenExecutor", "KilledWorker", "RayActorError", "WorkerCrashedError"}


def is_worker_death(error: BaseException | None) -> bool:
    while error is not None:
        if any(c.__name__ in WORKER_DEATHS for c in type(error).__mro__):
            return True
        error = error.__cause__
    return False
