"""The trial pool on real processes: a tiny random BERT saved to disk, real GLUE rows, no mocks.

Trials take about a second each, so most of the time goes into starting worker processes
(importing torch); tests share one backbone folder and one data folder per module.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from designspace import pool
from designspace.errors import DesignSpaceError
from designspace.pool import CRASH_TASK, TrialSpec, _resources, evaluate
from designspace.space import Design
from designspace.store import TrialStore
from designspace.train import Regime

REGIME = Regime(n_train=64, n_dev=64, batch_size=16)
DESIGNS = (
    Design(),
    Design(grouping="uniform", strategies=(("adapter",),) * 4),
    Design(allocation="increasing", strategies=(("bitfit",),) * 4),
    Design(tuned_groups=(2, 3), strategies=(("lora", "adapter"),) * 4),
)
TOO_SMALL = Design(budget=1e-5)  # 10 parameters: no module fits


@pytest.fixture(scope="module")
def backbone(tiny_bert_dir) -> str:
    return tiny_bert_dir


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, glue_root) -> str:
    """Real GLUE rows: SST-2 (first 1000 training rows, full dev) and an STS-B whose scores are 1e30.

    The SST-2 cut keeps each trial at a second: subsampling the full 67k-row file costs ~10 s.
    An STS-B score of 1e30 makes the squared error overflow float32 at the first step: a loss of inf.
    """
    glue = glue_root
    out = tmp_path_factory.mktemp("glue")
    (out / "SST-2").mkdir()
    lines = (glue / "SST-2" / "train.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    (out / "SST-2" / "train.tsv").write_text("".join(lines[:1001]), encoding="utf-8")
    shutil.copy(glue / "SST-2" / "dev.tsv", out / "SST-2" / "dev.tsv")
    (out / "STS-B").mkdir()
    header, *rows = (glue / "STS-B" / "train.tsv").read_text(encoding="utf-8").splitlines()[:201]
    huge = ["\t".join([*r.split("\t")[:-1], "1e30"]) for r in rows]
    (out / "STS-B" / "train.tsv").write_text("\n".join([header, *huge]) + "\n", encoding="utf-8")
    dev = (glue / "STS-B" / "dev.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    (out / "STS-B" / "dev.tsv").write_text("".join(dev[:201]), encoding="utf-8")
    return str(out)


def make_specs(stage, backbone, data_dir, designs=DESIGNS, seeds=(0,), task="sst2"):
    return [
        TrialSpec(stage, d, task, seed=s, regime=REGIME, backbone=backbone, data_dir=data_dir)
        for s in seeds
        for d in designs
    ]


def pid(row) -> int:
    return int(row["worker"].rsplit(":", 1)[1])


# -- specs and resources ---------------------------------------------------------------------------


def test_spec_key_uses_canonical_task_and_round_trips():
    spec = TrialSpec("s1", DESIGNS[1], "SST-2", seed=3, data_seed=7, regime=REGIME)
    assert spec.task == "sst2"
    assert spec.key == ("s1", DESIGNS[1].id, "sst2", 3, REGIME.id)
    back = TrialSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert back == spec and hash(back) == hash(spec)
    assert TrialSpec("s1", Design(), "no-such-task").task == "no-such-task"  # fails later, as a trial
    with pytest.raises(DesignSpaceError, match="spec.regime"):
        TrialSpec("s1", Design(), "sst2", regime={"n_train": 5})


def test_default_workers_and_threads_never_oversubscribe():
    from joblib import cpu_count

    cores = cpu_count()
    assert _resources("loky", None, None, remote=False) == (cores, 1)  # one single-threaded worker per core
    for n in range(1, cores + 1):
        workers, threads = _resources("loky", n, None, remote=False)
        assert workers == n and workers * threads <= cores
    assert _resources("dask", None, 1, remote=False) == (cores, 1)
    with pytest.raises(DesignSpaceError, match="n_jobs"):
        _resources("sequential", 2, None, remote=False)


# -- crash safety ----------------------------------------------------------------------------------

DRIVER = """
import json, sys
from designspace.pool import TrialSpec, evaluate
from designspace.store import TrialStore

if __name__ == "__main__":
    specs = [TrialSpec.from_dict(d) for d in json.load(open(sys.argv[1]))]
    evaluate(specs, TrialStore(sys.argv[2]), backend="sequential", threads=1, progress=False)
"""


def snapshot(path) -> dict[tuple, tuple]:
    con = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        rows = con.execute(
            "SELECT stage, design_id, task, seed, regime_id, id, status, attempts, started_at, ended_at FROM trials"
        ).fetchall()
    except sqlite3.OperationalError:  # the driver has not created the table yet
        rows = []
    finally:
        con.close()
    return {r[:5]: r[5:] for r in rows}


def test_driver_killed_mid_stage_loses_and_duplicates_nothing(tmp_path, backbone, data_dir):
    specs = make_specs("kill", backbone, data_dir, seeds=(0, 1))
    assert len({s.key for s in specs}) == 8
    (tmp_path / "specs.json").write_text(json.dumps([s.to_dict() for s in specs]))
    (tmp_path / "driver.py").write_text(textwrap.dedent(DRIVER))
    path = tmp_path / "trials.sqlite"
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "driver.py"), str(tmp_path / "specs.json"), str(path)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while not (path.exists() and sum(r[1] == "ok" for r in snapshot(path).values()) >= 2):
            assert proc.poll() is None, "the driver ended before it could be killed"
            assert time.monotonic() < deadline, "no two trials finished in time"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the session we started, should anything be left
        except ProcessLookupError:
            pass
    killed_at = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    before = snapshot(path)
    assert 2 <= len(before) < 8, "killed mid-stage"

    rows = evaluate(specs, TrialStore(path), backend="sequential", threads=1, progress=False)

    after = snapshot(path)
    assert len(after) == 8 and [r["status"] for r in rows] == ["ok"] * 8
    assert all(after[k] == v for k, v in before.items()), "a trial recorded before the kill changed"
    assert all(v[2] == 1 for v in after.values()), "a trial was recorded twice"
    rerun = [r for r in rows if r["started_at"] > killed_at]
    assert len(rerun) == 8 - len(before)
    assert {pid(r) for r in rerun} == {os.getpid()}


def test_corrupt_store_is_refused_before_any_work_and_left_untouched(tmp_path, backbone, data_dir):
    path = tmp_path / "trials.sqlite"
    garbage = b"SQLite format 3\x00" + os.urandom(4000)
    path.write_bytes(garbage)
    with pytest.raises(DesignSpaceError, match="untouched"):
        evaluate(make_specs("s", backbone, data_dir), TrialStore(path), backend="sequential", progress=False)
    assert path.read_bytes() == garbage
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trials.sqlite"]


# -- trial outcomes --------------------------------------------------------------------------------


def test_failed_diverged_and_infeasible_trials_are_recorded_and_the_rest_finish(tmp_path, backbone, data_dir):
    specs = [
        *make_specs("outcomes", backbone, data_dir, designs=DESIGNS[:2]),
        *make_specs("outcomes", backbone, data_dir, designs=DESIGNS[:1], task="no-such-task"),
        *make_specs("outcomes", backbone, data_dir, designs=DESIGNS[:1], task="stsb"),
        *make_specs("outcomes", backbone, data_dir, designs=[TOO_SMALL]),
    ]
    store = TrialStore(tmp_path / "trials.sqlite")
    rows = evaluate(specs, store, backend="sequential", threads=1, retries=1, progress=False)

    assert [r["status"] for r in rows] == ["ok", "ok", "failed", "diverged", "infeasible"]
    ok, _, failed, diverged, infeasible = rows
    assert 0 <= ok["score"] <= 1 and ok["metrics"]["accuracy"] == ok["score"] and ok["trainable_params"] > 0
    assert failed["attempts"] == 2, "a failed trial is retried within the call"
    assert "task='no-such-task'" in failed["error"] and "Traceback" in failed["traceback"]
    assert "loss became inf" in diverged["error"] and diverged["score"] is None
    assert "too small" in infeasible["error"]
    assert all(r["attempts"] == 1 for r in rows if r is not failed)
    assert all(r["experiment"] == "default" and r["versions"]["backbone"] == backbone for r in rows)

    # Resume: everything is done or out of retries, so nothing runs again.
    again = evaluate(specs, store, backend="sequential", threads=1, retries=1, progress=False)
    assert again == rows

    # The process keeps one clean backbone across trials, failed ones included.
    loaded = pool._BACKBONES[backbone]
    (more,) = make_specs("outcomes", backbone, data_dir, designs=DESIGNS[:1], seeds=(1,))
    assert evaluate([more], store, backend="sequential", threads=1, progress=False)[0]["status"] == "ok"
    assert pool._BACKBONES[backbone] is loaded


def test_dead_loky_worker_is_survived(tmp_path, backbone, data_dir):
    # One worker: joblib alone would run it in this process and the crash would kill the test.
    a, b = make_specs("crash", backbone, data_dir, designs=DESIGNS[:2])
    crash = TrialSpec("crash", DESIGNS[0], CRASH_TASK, regime=REGIME, backbone=backbone, data_dir=data_dir)
    rows = evaluate(
        [a, crash, b], TrialStore(tmp_path / "trials.sqlite"), n_jobs=1, threads=1, retries=1, progress=False
    )

    assert [r["status"] for r in rows] == ["ok", "failed", "ok"]
    assert "TerminatedWorkerError" in rows[1]["error"] and rows[1]["attempts"] == 2
    assert rows[0]["attempts"] == rows[2]["attempts"] == 1, "the other trials are not charged for the crash"
    assert os.getpid() not in {pid(rows[0]), pid(rows[2])}


# -- engines give the same numbers -----------------------------------------------------------------

COMPARED = ("status", "metrics", "score", "trainable_params", "plan_params", "tokens")


@pytest.fixture(scope="module")
def loky_rows(tmp_path_factory, backbone, data_dir):
    specs = make_specs("engines", backbone, data_dir, designs=DESIGNS[:2])
    store = TrialStore(tmp_path_factory.mktemp("loky") / "trials.sqlite")
    return specs, evaluate(specs, store, backend="loky", n_jobs=2, threads=1, progress=False)


@pytest.mark.parametrize("engine", ["dask", "ray"])
def test_cluster_engines_give_the_same_metrics_as_loky(engine, tmp_path, loky_rows):
    """dask: a LocalCluster of 2 one-thread worker processes; ray: a local 2-CPU ray instance."""
    pytest.importorskip({"dask": "dask.distributed", "ray": "ray"}[engine])
    specs, reference = loky_rows
    store = TrialStore(tmp_path / "trials.sqlite")
    rows = evaluate(specs, store, backend=engine, n_jobs=2, threads=1, progress=False)
    assert [r["status"] for r in reference] == ["ok", "ok"]
    for got, want in zip(rows, reference, strict=True):
        assert {k: got[k] for k in COMPARED} == {k: want[k] for k in COMPARED}
        assert pid(got) != os.getpid()
