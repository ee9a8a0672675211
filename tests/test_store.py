"""The trial store: one typed record per key, stage states, refusal of foreign files, one driver,
one-line errors for damaged files, read-only media and deleted stores."""

import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import designspace.store
from designspace import Design
from designspace.errors import DesignSpaceError
from designspace.regime import Regime
from designspace.store import SCHEMA_VERSION, TrialStore
from designspace.trial import Status, TrialRecord, TrialSpec


def spec(seed=0, task="sst2", design=None, **kw) -> TrialSpec:
    return TrialSpec(task=task, design=design or Design(), seed=seed, regime=Regime(n_train=100), **kw)


def rec(status="ok", seed=0, score=0.8, **kw) -> TrialRecord:
    extra = {k: v for k, v in kw.items() if k in ("task", "design", "budget", "data_seed", "backbone_id", "data_id", "label")}
    out = {k: v for k, v in kw.items() if k not in extra}
    return TrialRecord(spec(seed, **extra), Status(status), score=score if status == "ok" else None, **out)


@pytest.fixture
def store(tmp_path):
    with TrialStore(tmp_path / "results" / "exp" / "trials.sqlite") as s:
        yield s


def test_a_record_round_trips_every_field(store):
    full = rec(metrics={"accuracy": 0.8}, predictions=[0.0, 1.0], trainable_params=1234, plan_params=1234,
               head_params=770, tokens=4096, padded_tokens=5000, steps=13, n_train=200, n_eval=100, final_loss=0.4,
               seconds_train=1.5, seconds_eval=0.25, peak_mem_mb=300.0, device="cpu", versions={"torch": "2.13"},
               result={"plan": {"modules": []}}, worker="host:1", started_at="2025-01-01T00:00:00+00:00")
    assert store.record(full)
    store.record(rec("diverged", seed=1, metrics={"accuracy": float("nan")}))
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with TrialStore(store.path, create=False, readonly=True) as reader:  # a second connection sees it
        got = reader.records()
    assert [r.spec.seed for r in got] == [0, 1]
    assert got[0] == full
    assert got[0].spec == full.spec and got[0].key == full.key
    assert math.isnan(got[1].metrics["accuracy"]) and got[1].score is None
    df = store.to_dataframe()
    assert list(df["seed"]) == [0, 1] and df.loc[0, "metric.accuracy"] == 0.8
    assert "metrics" not in df.columns


def test_the_key_covers_everything_that_changes_a_result():
    """The old key (stage, design, task, seed, regime) left out the backbone, data seed, data and budget."""
    base = spec()
    changed = [spec(data_seed=1), spec(budget=0.001), spec(backbone_id="smollm2@1"), spec(data_id="other-data"),
               spec(task="stsb"), spec(seed=1), spec(design=Design(grouping="uniform")),
               spec(options={"lora_scale": 1.0}), spec(eval_split="select", n_select=100),
               base.with_(regime=Regime(n_train=101)), base.with_(regime=Regime(n_train=100, lr={"lora": 1e-3})),
               base.with_(role_map={"family": "x", "stacks": []})]
    assert len({base.key, *(s.key for s in changed)}) == len(changed) + 1
    # How a trial is run, or where its data lives, is not what it is.
    same = [spec(label="a name"), spec(data_dir="/elsewhere"), base.with_(regime=Regime(n_train=100, threads=2))]
    assert {s.key for s in same} == {base.key}


def test_lost_is_retried_and_a_final_record_is_kept(store):
    assert store.record(rec("lost", error="worker died"))
    assert store.record(rec("lost", error="worker died again"))
    assert store.get(spec().key).attempts == 2
    assert store.record(rec("ok", score=0.9))
    (r,) = store.records()
    assert (r.status, r.score, r.attempts, r.error) == (Status.OK, 0.9, 3, None)
    assert store.record(rec("failed", error="late")) is False  # a result is never replaced
    assert store.records()[0].score == 0.9
    assert store.statuses() == {spec().key: Status.OK}
    assert store.counts() == {"ok": 1}


def test_retry_reopens_the_trials_a_fixed_bug_failed_and_nothing_else(store, capsys):
    """Full fine-tuning was recorded infeasible by a scorer that did not know its kind: after the fix,
    those trials must train again on the next run, and no ok result may be reopened."""
    from designspace.cli import main

    store.record(rec("infeasible", seed=0, label="full fine-tuning", error="compile_plan needs a Design"))
    store.record(rec("infeasible", seed=1, label="other", error="too big"))
    store.record(rec("ok", seed=2, label="full fine-tuning"))
    store.record(rec("failed", seed=3, label="full fine-tuning", error="boom"))
    store.close()
    assert main(["retry", str(store.path.parent), "--status", "infeasible", "--label", "full fine-tuning"]) == 0
    assert "1 infeasible trial(s) of label 'full fine-tuning' reopened" in capsys.readouterr().out
    assert store.statuses() == {spec(0).key: Status.LOST, spec(1).key: Status.INFEASIBLE,
                                spec(2).key: Status.OK, spec(3).key: Status.FAILED}
    assert store.record(rec("ok", seed=0, score=0.7))  # the next run's result takes the reopened key
    assert store.get(spec(0).key).attempts == 2  # the infeasible attempt, then this one
    with pytest.raises(DesignSpaceError, match="ok results stay"):
        store.retry("ok")
    assert main(["retry", str(store.path.parent / "nothing.sqlite"), "--status", "failed"]) == 2
    assert "no trial store there" in capsys.readouterr().err
    with TrialStore(store.path, create=False) as driver, driver.driver_lock():  # a run is going on
        assert main(["retry", str(store.path.parent), "--status", "failed"]) == 2
    err = capsys.readouterr().err
    assert "another driver is running" in err and "retry once it has ended" in err and "--output" not in err
    assert store.get(spec(3).key).status is Status.FAILED  # nothing reopened under the running driver


def test_records_by_keys_keep_the_order_asked(store):
    for s in range(5):
        store.record(rec(seed=s))
    keys = [spec(seed=s).key for s in (3, 1, 4, 9)]
    assert [r.spec.seed for r in store.records(keys)] == [3, 1, 4]


def test_stage_states_and_notes(store):
    store.save_stage("1-grouping", 0, "grouping", {"rounds": [1]})
    store.save_stage("1-grouping", 0, "grouping", {"rounds": [1, 2]})
    store.save_stage("2-allocation", 1, "allocation", {"rounds": []})
    assert store.stage("1-grouping") == {"rounds": [1, 2]}
    assert [s["name"] for s in store.stages()] == ["1-grouping", "2-allocation"]
    store.set_note("experiment", {"budget": 0.005})
    assert store.note("experiment") == {"budget": 0.005} and store.note("final_design", 3) == 3
    with pytest.raises(DesignSpaceError, match="store note='decision:1-grouping' is invalid"):
        store.note("decision:1-grouping")  # the f-string keys of before are gone


def _assert_refused_untouched(path, match):
    before = path.read_bytes()
    with pytest.raises(DesignSpaceError, match=match) as e:
        TrialStore(path).open()
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "--output" in msg
    assert path.read_bytes() == before


def test_corrupt_file_is_refused_and_left_identical(tmp_path):
    path = tmp_path / "trials.sqlite"
    path.write_bytes(os.urandom(8192))
    _assert_refused_untouched(path, "not a SQLite file")
    path.write_bytes(b"SQLite format 3\x00" + os.urandom(8192))
    _assert_refused_untouched(path, "damaged or not a readable SQLite database")


def test_a_store_damaged_past_its_first_page_is_one_line(tmp_path):
    path = tmp_path / "trials.sqlite"
    with TrialStore(path) as s:
        for i in range(300):
            s.record(rec(seed=i, error="x" * 500))
    data = bytearray(path.read_bytes())
    data[8192:] = os.urandom(len(data) - 8192)  # the first pages (schema) survive, the rows do not
    path.write_bytes(bytes(data))
    with pytest.raises(DesignSpaceError) as e:
        with TrialStore(path) as s:
            s.records()
    assert "\n" not in str(e.value) and "damaged" in str(e.value) and str(path) in str(e.value)


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_foreign_sqlite_is_refused_and_left_identical(tmp_path, journal):
    path = tmp_path / "trials.sqlite"
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA journal_mode={journal}")
    con.execute("CREATE TABLE meta (key TEXT, value TEXT)")  # same table name, no marker
    con.execute("CREATE TABLE users (name TEXT)")
    con.commit()
    con.close()
    _assert_refused_untouched(path, "not a designspace trial store")


@pytest.mark.parametrize("version", [SCHEMA_VERSION + 1, 1])
def test_other_schemas_are_refused(tmp_path, version):
    path = tmp_path / "trials.sqlite"
    TrialStore(path).open().close()
    con = sqlite3.connect(path)
    con.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(version),))
    con.commit()
    con.close()
    with pytest.raises(DesignSpaceError, match=f"schema_version={version} is (newer|older)") as e:
        TrialStore(path).open()
    assert "\n" not in str(e.value)


def test_reader_does_not_create_a_missing_store(tmp_path):
    path = tmp_path / "typo" / "trials.sqlite"
    with pytest.raises(DesignSpaceError, match="does not exist"):
        TrialStore(path, create=False).counts()
    assert not path.parent.exists()


def test_empty_file_becomes_a_store(tmp_path):
    path = tmp_path / "trials.sqlite"
    path.touch()  # e.g. left by a crash before the first write
    with TrialStore(path) as s:
        s.record(rec())
        assert s.counts() == {"ok": 1}


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through read-only permissions")
def test_a_finished_store_on_read_only_media_is_readable(tmp_path):
    path = tmp_path / "ro" / "trials.sqlite"
    with TrialStore(path) as s:
        s.record(rec())
    for f in path.parent.iterdir():
        f.chmod(0o444)
    path.parent.chmod(0o555)
    try:
        with TrialStore(path, create=False, readonly=True) as s:
            assert s.counts() == {"ok": 1}
        with pytest.raises(DesignSpaceError, match="read-only|readonly|cannot"):
            with TrialStore(path) as s:
                s.record(rec(seed=1))
    finally:
        path.parent.chmod(0o755)


def test_a_read_only_store_opens_as_an_immutable_snapshot(tmp_path, monkeypatch):
    """WAL readers need the -shm file; where it cannot be made (read-only media) the file is read
    as an immutable snapshot instead of being called corrupt."""
    path = tmp_path / "trials.sqlite"
    with TrialStore(path) as s:
        s.record(rec())
    real = sqlite3.connect

    def no_shm(database, *a, **kw):
        if isinstance(database, str) and "mode=ro" in database:
            raise sqlite3.OperationalError("unable to open database file")
        return real(database, *a, **kw)

    monkeypatch.setattr(designspace.store.sqlite3, "connect", no_shm)
    with TrialStore(path, create=False, readonly=True) as s:
        assert s.counts() == {"ok": 1}


@pytest.mark.parametrize("made", ["empty file", "sqlite without tables"])
def test_a_reader_of_a_store_being_created_gets_one_line(tmp_path, made):
    """A reader that opened the file between the driver's connect and its schema commit failed later,
    on its first query, with "no such table: trials" (a CI run of test_pool hit it)."""
    path = tmp_path / "trials.sqlite"
    if made == "empty file":
        path.touch()
    else:
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA user_version=1")
        conn.commit()
        conn.close()
    reader = TrialStore(path, create=False, readonly=True)
    with pytest.raises(DesignSpaceError, match="holds no trials yet"):
        reader.open()
    with TrialStore(path) as s:  # the driver goes on and makes the store; nothing was written by the reader
        s.record(rec())
    with TrialStore(path, create=False, readonly=True) as s:
        assert s.counts() == {"ok": 1}


def test_a_store_deleted_mid_run_stops_the_writer(store):
    """The driver kept writing to the unlinked file for a minute and then claimed a result."""
    store.record(rec())
    store.path.unlink()
    with pytest.raises(DesignSpaceError, match="deleted or replaced") as e:
        store.record(rec(seed=1))
    assert "\n" not in str(e.value)


def test_one_driver_per_store(store, tmp_path):
    code = textwrap.dedent(f"""
        import sys, time
        from designspace.store import TrialStore
        with TrialStore({str(store.path)!r}).driver_lock():
            print("locked", flush=True)
            time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(DesignSpaceError, match=rf"another driver is running on this store \(pid {child.pid} on ") as e:
            with store.driver_lock():
                pass
        assert "\n" not in str(e.value)
        child.kill()  # a killed driver leaves no stale lock: the kernel drops it
        child.wait(timeout=10)
        with store.driver_lock():
            pass
    finally:
        child.kill()
        child.stdout.close()


CHILD = """
import sys
from designspace import Design
from designspace.regime import Regime
from designspace.store import TrialStore
from designspace.trial import Status, TrialRecord, TrialSpec

store = TrialStore(sys.argv[1])
for i in range(1_000_000):
    spec = TrialSpec(task="sst2", design=Design(), seed=i, regime=Regime(n_train=100))
    store.record(TrialRecord(spec, Status.OK, score=i / 1e6, metrics={"accuracy": i / 1e6}))
    print(i, flush=True)
"""


def test_sigkilled_writer_keeps_every_committed_record(tmp_path):
    path = tmp_path / "trials.sqlite"
    root = Path(designspace.store.__file__).parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(CHILD), str(path)], stdout=subprocess.PIPE, text=True, env=env
    )
    printed = []
    try:
        for line in child.stdout:
            printed.append(int(line))
            if len(printed) == 10:
                with TrialStore(path, create=False, readonly=True) as reader:  # reading while the writer writes
                    assert reader.counts()["ok"] >= 10
            if len(printed) >= 40:
                break
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=10)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL and len(printed) == 40
    with TrialStore(path, create=False) as s:
        got = {r.spec.seed: r for r in s.records()}
        assert s._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert set(printed) <= set(got)
    assert all(r.status is Status.OK and r.metrics["accuracy"] == r.score for r in got.values())
