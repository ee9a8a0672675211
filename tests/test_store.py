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
from designspace.errors import DesignSpaceError
from designspace.store import SCHEMA_VERSION, TrialStore


def row(design_id="d0", status="ok", seed=0, stage="s1", **extra):
    r = {
        "experiment": "exp",
        "stage": stage,
        "design_id": design_id,
        "task": "sst2",
        "seed": seed,
        "regime_id": "r0",
        "status": status,
    }
    r.update(extra)
    return r


def key(r):
    return (r["stage"], r["design_id"], r["task"], r["seed"], r["regime_id"])


@pytest.fixture
def store(tmp_path):
    with TrialStore(tmp_path / "results" / "exp" / "trials.sqlite") as s:
        yield s


def test_round_trip_creates_parents_and_uses_wal(store):
    full = row(
        design={"grouping": "spindle", "groups": [1, 2]},
        regime={"lr": 1e-3, "steps": 50},
        metrics={"acc": 0.75, "f1": 0.5},
        versions={"torch": "2.3"},
        score=0.75,
        trainable_params=1234,
        plan_params=1234,
        seconds_train=1.5,
        seconds_eval=0.25,
        peak_mem_mb=300.0,
        tokens=4096,
        worker="host:1",
        started_at="2025-01-01T00:00:00+00:00",
    )
    assert store.record(full)
    store.record(row("d1", "diverged", metrics={"acc": float("nan")}, score=None))
    assert store.path.parent.is_dir()
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    with TrialStore(store.path, create=False) as reader:  # a second connection sees committed rows
        got = reader.trials()
    assert [t["design_id"] for t in got] == ["d0", "d1"]
    first = got[0]
    for name, value in full.items():
        assert first[name] == value, name
    assert first["attempts"] == 1 and first["ended_at"].endswith("+00:00")
    assert first["traceback"] is None
    assert math.isnan(got[1]["metrics"]["acc"]) and got[1]["score"] is None

    df = store.to_dataframe()
    assert list(df["design_id"]) == ["d0", "d1"]
    assert df.loc[0, "metric.acc"] == 0.75 and df.loc[0, "metric.f1"] == 0.5
    assert math.isnan(df.loc[1, "metric.f1"])  # metrics a trial lacks come out missing
    assert "metrics" not in df.columns and "metrics_json" not in df.columns
    assert store.to_dataframe(stage="nope").empty


def test_json_columns_accept_encoded_strings(store):
    store.record(row(design_json='{"a": 1}'))
    assert store.trials()[0]["design"] == {"a": 1}
    with pytest.raises(DesignSpaceError, match="design or design_json, not both"):
        store.record(row("d1", design={"a": 1}, design_json="{}"))


def test_unique_key_queries_and_counts(store):
    store.record(row("d0", "ok", stage="s1"))
    store.record(row("d0", "ok", stage="s1", seed=1))
    store.record(row("d1", "failed", stage="s1", error="boom"))
    store.record(row("d2", "infeasible", stage="s2"))
    store.record(row("d3", "diverged", stage="s2"))

    assert store.stages() == ["s1", "s2"]
    assert store.counts("s1") == {"ok": 2, "failed": 1}
    assert store.counts() == {"ok": 2, "failed": 1, "infeasible": 1, "diverged": 1}
    # failed trials are not done: callers retry them
    assert store.done_keys("s1") == {("s1", "d0", "sst2", 0, "r0"), ("s1", "d0", "sst2", 1, "r0")}
    assert len(store.done_keys()) == 4
    assert store.done_keys(statuses=("failed",)) == {key(row("d1"))}
    assert [t["design_id"] for t in store.trials(status="ok")] == ["d0", "d0"]
    assert [t["design_id"] for t in store.trials(stage="s2", status=("diverged", "ok"))] == ["d3"]

    with pytest.raises(sqlite3.IntegrityError):  # the key is enforced by SQLite itself, not only by record()
        store._db.execute(
            "INSERT INTO trials (stage, design_id, task, seed, regime_id, status) VALUES (?,?,?,?,?,?)",
            ("s1", "d0", "sst2", 0, "r0", "ok"),
        )


def test_failed_then_ok_replaces_and_ok_is_kept(store):
    k = key(row())
    assert store.attempts(k) == 0
    assert store.record(row(status="failed", error="OOM", traceback="tb", score=0.1))
    assert store.record(row(status="failed", error="OOM again"))
    assert store.attempts(k) == 2
    assert store.record(row(status="ok", score=0.9))
    (t,) = store.trials()
    assert (t["status"], t["score"], t["attempts"]) == ("ok", 0.9, 3)
    assert t["error"] is None and t["traceback"] is None  # replacing resets what the new row lacks

    assert store.record(row(status="failed", error="late")) is False
    assert store.record(row(status="ok", score=0.1)) is False
    (t,) = store.trials()
    assert (t["status"], t["score"], t["attempts"], t["error"]) == ("ok", 0.9, 3, None)


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"colour": "red"}, "row key='colour'"),
        ({"id": 7}, "id is managed by the store"),
        ({"status": "crashed"}, "status='crashed' is invalid; allowed: ok, failed, diverged, infeasible"),
        ({"regime_id": None}, "regime_id=None"),
    ],
)
def test_bad_rows_are_refused_with_one_line(store, bad, match):
    with pytest.raises(DesignSpaceError, match=match) as e:
        store.record({**row(), **bad})
    assert "\n" not in str(e.value) and str(store.path) in str(e.value)
    assert store.trials() == []


def _assert_refused_untouched(path, match):
    before = path.read_bytes()
    with pytest.raises(DesignSpaceError, match=match) as e:
        TrialStore(path).open()
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "--store" in msg
    assert path.read_bytes() == before


def test_corrupt_file_is_refused_and_left_identical(tmp_path):
    path = tmp_path / "trials.sqlite"
    path.write_bytes(os.urandom(8192))
    _assert_refused_untouched(path, "not a SQLite file")
    # a SQLite header followed by garbage is corrupt too
    path.write_bytes(b"SQLite format 3\x00" + os.urandom(8192))
    _assert_refused_untouched(path, "not a readable SQLite database")


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_foreign_sqlite_is_refused_and_left_identical(tmp_path, journal):
    path = tmp_path / "trials.sqlite"
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA journal_mode={journal}")
    con.execute("CREATE TABLE meta (key TEXT, value TEXT)")  # same table name, no marker
    con.execute("CREATE TABLE users (name TEXT)")
    con.execute("INSERT INTO users VALUES ('ada')")
    con.commit()
    con.close()
    _assert_refused_untouched(path, "not a designspace trial store")


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "trials.sqlite"
    TrialStore(path).open().close()
    con = sqlite3.connect(path)
    con.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    con.commit()
    con.close()
    _assert_refused_untouched(path, f"schema_version={SCHEMA_VERSION + 1} is newer")


def test_reader_does_not_create_a_missing_store(tmp_path):
    path = tmp_path / "typo" / "trials.sqlite"
    with pytest.raises(DesignSpaceError, match="does not exist"):
        TrialStore(path, create=False).counts()
    assert not path.parent.exists()


def test_empty_file_becomes_a_store(tmp_path):
    path = tmp_path / "trials.sqlite"
    path.touch()  # e.g. left by a crash before the first write
    with TrialStore(path) as s:
        s.record(row())
        assert s.counts() == {"ok": 1}


def test_meta_kv_round_trip(store):
    assert store.meta_get("decision.s1") is None
    assert store.meta_get("decision.s1", {}) == {}
    store.meta_set("decision.s1", {"grouping": "spindle", "kept": [1, 2]})
    store.meta_set("decision.s1", {"grouping": "uniform"})
    with TrialStore(store.path) as other:
        assert other.meta_get("decision.s1") == {"grouping": "uniform"}


CHILD = """
import sys
from designspace.store import TrialStore

store = TrialStore(sys.argv[1])
for i in range(1_000_000):
    store.record({"stage": "s1", "design_id": f"d{i}", "task": "t", "seed": 0, "regime_id": "r",
                  "status": "ok", "metrics": {"acc": i / 10}, "score": i / 10})
    print(i, flush=True)
"""


def test_sigkilled_writer_keeps_every_committed_row(tmp_path):
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
                with TrialStore(path, create=False) as reader:  # reading while the writer writes
                    assert reader.counts()["ok"] >= 10
            if len(printed) >= 40:
                break
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=10)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert len(printed) == 40

    with TrialStore(path, create=False) as s:
        got = {t["design_id"]: t for t in s.trials()}
        assert s._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert {f"d{i}" for i in printed} <= set(got)
    # rows committed after the last print may exist, but nothing beyond one in-flight trial is half-written
    assert all(t["status"] == "ok" and t["metrics"]["acc"] == t["score"] for t in got.values())
