"""What runs in a worker process: thread settings, a watchdog for the driver, and the scorer."""

from __future__ import annotations

import os
import socket
import threading
import time
import traceback

from ..store import utc_now
from ..trial import Status, TrialRecord, TrialSpec

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
_WATCHDOG: list[int] = []


def set_threads(threads: int) -> None:
    os.environ.update({v: str(threads) for v in THREAD_VARS})  # for libraries loaded later
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def watch_parent(driver_pid: int, every: float = 1.0) -> None:
    """Exit this worker within seconds once the driver is gone (killed with SIGKILL, say): a worker
    must not train on for minutes for nobody. Once per process; the driver's pid is checked, not
    the parent's, since engines may put a manager process in between."""
    if _WATCHDOG or driver_pid == os.getpid():
        return
    _WATCHDOG.append(driver_pid)
    parent = os.getppid()

    def watch():
        while True:
            time.sleep(every)
            if os.getppid() != parent:  # reparented: our parent died (a zombie driver still "exists")
                os._exit(3)
            try:
                os.kill(driver_pid, 0)
            except ProcessLookupError:
                os._exit(3)
            except PermissionError:  # alive, another user's: not ours to judge
                pass

    threading.Thread(target=watch, name="designspace-watchdog", daemon=True).start()


def _start(threads: int | None, driver_pid: int | None, host: str | None) -> None:
    if driver_pid is not None and host == socket.gethostname():
        watch_parent(driver_pid)
    if threads:
        set_threads(threads)


def _stamp(records: list[TrialRecord], started: str) -> list[TrialRecord]:
    ended, worker = utc_now(), f"{socket.gethostname()}:{os.getpid()}"
    for record in records:
        record.worker, record.started_at, record.ended_at = worker, started, ended
    return records


def _score(spec: TrialSpec, scorer) -> TrialRecord:
    """One spec's record; a scorer's exception is the trial's failure, never the worker's."""
    started = utc_now()
    try:
        record = scorer(spec)
    except Exception as e:
        record = TrialRecord(spec, Status.FAILED, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
    return _stamp([record], started)[0]


def run_trial(index: int, spec: TrialSpec, threads: int | None, scorer, driver_pid: int | None,
              host: str | None = None) -> tuple[int, TrialRecord]:
    """Score one spec in this process; never raises (a trial's failure is its record)."""
    _start(threads, driver_pid, host)
    return index, _score(spec, scorer)


def run_pack_trials(index: int, specs: list[TrialSpec], threads: int | None, scorer, driver_pid: int | None,
                    host: str | None = None) -> tuple[int, list[TrialRecord]]:
    """Score the specs of one pack in this worker: ``scorer.pack(specs)`` where the scorer has it. Never
    raises: if the pack call itself raises, each spec is scored alone, so one design's failure is its own."""
    _start(threads, driver_pid, host)
    if hasattr(scorer, "pack"):
        started = utc_now()
        try:
            records = scorer.pack(specs)
            if [r.key for r in records] != [s.key for s in specs]:
                raise RuntimeError(f"{scorer!r}.pack returned records for other specs")
            return index, _stamp(records, started)
        except Exception:
            pass
    return index, [_score(spec, scorer) for spec in specs]
