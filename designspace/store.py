"""The trial store: one SQLite file (WAL mode, no server) of trial records, stage states and notes.

One driver writes (a lock file enforces it, see :meth:`TrialStore.driver_lock`); status commands and
plots read at the same time (WAL lets readers see the last committed state). Every ``record`` is its
own committed transaction, so killing the driver loses at most the trial it was writing.

A file that is not ours (garbage bytes, or SQLite without our marker) is refused and never touched.
A finished store on read-only media opens read-only (``readonly=True``, immutable when WAL's -shm
file cannot be made). SQLite's own failures (a full disk, a damaged file, a read-only folder) become
one-line :class:`DesignSpaceError` s that name the file and keep what was recorded.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import DesignSpaceError
from .trial import OUTCOME_FIELDS, Status, TrialRecord, TrialSpec

APP = "designspace-trials"
SCHEMA_VERSION = 2

# The spec's fields a query filters on get columns of their own; the whole spec is JSON.
SPEC_COLUMNS = {"design_id": "TEXT", "task": "TEXT", "seed": "INTEGER", "kind": "TEXT", "label": "TEXT"}


def _sql_type(annotation: str) -> str:
    if "dict" in annotation or "list" in annotation:
        return "JSON"
    if "float" in annotation:
        return "REAL"
    if "int" in annotation:
        return "INTEGER"
    return "TEXT"


OUTCOME_COLUMNS = {f.name: _sql_type(str(f.type)) for f in OUTCOME_FIELDS}
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS notes (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS stages (name TEXT PRIMARY KEY, position INTEGER, component TEXT, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trials (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    spec TEXT NOT NULL,
    {", ".join(f"{c} {t}" for c, t in SPEC_COLUMNS.items())},
    {", ".join(f"{c} {'TEXT' if t == 'JSON' else t}" for c, t in OUTCOME_COLUMNS.items())}
);
CREATE INDEX IF NOT EXISTS trials_status ON trials (status);
"""
_SQLITE_HEADER = b"SQLite format 3\x00"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _encode(record: TrialRecord) -> dict[str, Any]:
    row: dict[str, Any] = {"key": record.key, "spec": json.dumps(record.spec.to_dict(), sort_keys=True)}
    row.update({
        "design_id": record.spec.design_id, "task": record.spec.task, "seed": record.spec.seed,
        "kind": record.spec.kind, "label": record.spec.label,
    })
    for name, value in record.outcome().items():
        row[name] = json.dumps(value, sort_keys=True) if OUTCOME_COLUMNS[name] == "JSON" and value is not None else value
    return row


def _decode(row: sqlite3.Row) -> TrialRecord:
    d = dict(row)
    outcome = {}
    for name, kind in OUTCOME_COLUMNS.items():
        value = d.get(name)
        outcome[name] = json.loads(value) if kind == "JSON" and value is not None else value
    for name in ("metrics", "versions", "result"):
        outcome[name] = outcome[name] or {}
    return TrialRecord(spec=TrialSpec.from_dict(json.loads(d["spec"])), **outcome)


class TrialStore:
    """Records of one experiment in ``path`` (callers choose it, e.g. ``results/<experiment>/trials.sqlite``).

    The file is opened on first use (or by ``open()`` / ``with``); a missing file and its parent
    folders are created then, unless ``create=False`` or ``readonly=True``.
    """

    def __init__(self, path: str | Path, create: bool = True, readonly: bool = False, durable: bool = True):
        self.path = Path(path)
        # durable=False: no fsync per commit, for throwaway stores (simulations); a crash may lose the tail.
        self.durable = durable
        self.create = create and not readonly  # readers pass False so a typo does not make an empty store
        self.readonly = readonly
        self._conn: sqlite3.Connection | None = None
        self._inode: tuple[int, int] | None = None
        # The driver may record from worker threads; one connection, one writer at a time.
        self._lock = threading.RLock()

    # -- lifecycle -------------------------------------------------------------------------------
    def open(self) -> TrialStore:
        with self._lock:
            if self._conn is None:
                self._conn = self._connect()
        return self

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> TrialStore:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TrialStore({str(self.path)!r})"

    def _refuse(self, why: str) -> DesignSpaceError:
        return DesignSpaceError(
            f"{self.path}: {why}; the file was left untouched - pass another --output or move the file away"
        )

    def _read_only_connection(self) -> sqlite3.Connection:
        uri = self.path.resolve().as_uri()
        try:
            conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=30)
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.OperationalError:
            # WAL readers need the -shm file; on read-only media it cannot be made: read the file as
            # an immutable snapshot instead (what a finished store on a DVD or a read-only mount is).
            return sqlite3.connect(f"{uri}?immutable=1", uri=True, timeout=30)

    def _check_existing(self) -> bool:
        """Validate an existing file without writing to it; return True if it still needs our schema."""
        if self.path.is_dir():
            raise self._refuse("is a folder, not a trial store file")
        with open(self.path, "rb") as f:
            head = f.read(len(_SQLITE_HEADER))
        if not head:
            return True  # an empty file holds nothing to lose (e.g. a crash right after creation)
        if head != _SQLITE_HEADER:
            raise self._refuse("is not a SQLite file (corrupt or another format)")
        try:
            ro = self._read_only_connection()
            try:
                tables = {r[0] for r in ro.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                meta = dict(ro.execute("SELECT key, value FROM meta")) if "meta" in tables else {}
                if "trials" in tables:
                    ro.execute("SELECT count(*) FROM trials").fetchone()
            finally:
                ro.close()
        except sqlite3.DatabaseError as e:
            raise self._refuse(f"is damaged or not a readable SQLite database ({e})") from None
        if not tables:
            return True
        if meta.get("app") != APP:
            raise self._refuse(f"is a SQLite database but not a designspace trial store (no app={APP!r} marker)")
        version = int(meta.get("schema_version", 0))
        if version != SCHEMA_VERSION:
            newer = "newer" if version > SCHEMA_VERSION else "older"
            raise DesignSpaceError(
                f"{self.path}: schema_version={version} is {newer} than this designspace's ({SCHEMA_VERSION}) and "
                "has no migration; rerun into another --output (or move the folder away)"
            )
        return False

    def _connect(self) -> sqlite3.Connection:
        if not self.path.exists() and not self.create:
            raise DesignSpaceError(f"{self.path}: store does not exist; run the experiment first or pass another --output")
        fresh = self._check_existing() if self.path.exists() else True
        if self.readonly:
            conn = self._read_only_connection()
            # A file without our schema (``fresh``) may have got it since: look again on this connection.
            if fresh and not conn.execute("SELECT 1 FROM sqlite_master WHERE name='trials'").fetchone():
                conn.close()
                raise DesignSpaceError(
                    f"{self.path}: holds no trials yet (a run is creating it, or one stopped before writing "
                    "anything); try again once the run has started, or rerun it"
                )
            conn.row_factory = sqlite3.Row
            return conn
        with self._sqlite_errors("create"):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit mode: each write below opens and commits its own explicit transaction.
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            try:
                if fresh:
                    # Schema and marker land in one transaction, so a crash never leaves a half-made store.
                    conn.executescript(
                        "BEGIN IMMEDIATE;" + _SCHEMA
                        + f"INSERT OR IGNORE INTO meta VALUES ('app', '{APP}'), ('schema_version', '{SCHEMA_VERSION}');"
                        + "COMMIT;"
                    )
                conn.execute("PRAGMA journal_mode=WAL")
                # A trial costs seconds to minutes; an fsync per commit is cheap insurance against power loss.
                conn.execute("PRAGMA synchronous=FULL" if self.durable else "PRAGMA synchronous=OFF")
            except BaseException:
                conn.close()
                raise
        st = self.path.stat()
        self._inode = (st.st_dev, st.st_ino)
        return conn

    @contextmanager
    def _sqlite_errors(self, action: str) -> Iterator[None]:
        """SQLite's and the OS's failures as one line naming the file; nothing recorded is lost."""
        try:
            yield
        except sqlite3.DatabaseError as e:
            text = str(e)
            if "malformed" in text or "not a database" in text:
                why = f"is damaged ({text}); copy the folder elsewhere and rerun into another --output"
            elif "readonly" in text or "read-only" in text:
                why = f"cannot be written ({text}); the folder is read-only: pass another --output"
            elif "full" in text:
                why = f"cannot {action} ({text}); free disk space and rerun the same command to resume"
            else:
                why = f"cannot {action} ({text})"
            raise DesignSpaceError(f"{self.path}: {why}") from None
        except OSError as e:
            raise DesignSpaceError(f"{self.path}: cannot {action} ({e.strerror or e}); check the folder") from None

    def check_still_there(self) -> None:
        """Refuse to go on writing to a store that was deleted or replaced while this process ran."""
        if self._inode is None:
            return
        try:
            st = self.path.stat()
            same = (st.st_dev, st.st_ino) == self._inode
        except FileNotFoundError:
            same = False
        if not same:
            raise DesignSpaceError(
                f"{self.path}: the store was deleted or replaced while this run was writing to it; stopped. "
                "Rerun the same command to start again (trials recorded since then are lost)"
            )

    @property
    def _db(self) -> sqlite3.Connection:
        return self.open()._conn  # type: ignore[return-value]

    def _execute(self, sql: str, params: Iterable = ()) -> list[sqlite3.Row]:
        with self._lock, self._sqlite_errors("read"):
            return self._db.execute(sql, tuple(params)).fetchall()

    def _write(self, statements: list[tuple[str, tuple]], action: str = "write") -> None:
        """Run ``statements`` in one committed transaction."""
        with self._lock, self._sqlite_errors(action):
            self.check_still_there()
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                for sql, params in statements:
                    db.execute(sql, params)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    # -- one driver per store ----------------------------------------------------------------------
    @contextmanager
    def driver_lock(self, instead: str = "pass another --output") -> Iterator[None]:
        """Hold ``<store>.lock`` while a driver runs: a second driver is refused in one line naming the
        first (pid, host, since) and ending with ``instead`` (what else the refused command can do). The
        kernel drops the lock when its holder dies, so a killed driver leaves no stale lock behind."""
        import fcntl

        lock_path = self.path.with_name(self.path.name + ".lock")
        with self._sqlite_errors("lock"):
            lock_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 400, 0).decode(errors="replace").strip() or "another process"
                raise DesignSpaceError(
                    f"{self.path}: another driver is running on this store ({holder}); wait for it, stop it, or "
                    f"{instead}"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {utc_now()}".encode(), 0)
            yield
        finally:
            os.close(fd)  # releases the lock

    # -- trials ----------------------------------------------------------------------------------
    def record(self, record: TrialRecord) -> bool:
        """Insert a record, or replace the record of its key unless that one is final.

        Returns False (and changes nothing) when a final record (any status but ``lost``) holds the
        key. Replacing a lost record increments ``attempts``.
        """
        row = _encode(record)
        cols = list(row)
        with self._lock:
            old = self._execute("SELECT id, status, attempts FROM trials WHERE key=?", (record.key,))
            if old and Status(old[0]["status"]).final:
                return False
            if old:
                row["attempts"] = old[0]["attempts"] + 1
                sql = f"UPDATE trials SET {', '.join(f'{c}=?' for c in cols)} WHERE id=?"
                self._write([(sql, (*[row[c] for c in cols], old[0]["id"]))], "record a trial")
            else:
                sql = f"INSERT INTO trials ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
                self._write([(sql, tuple(row[c] for c in cols))], "record a trial")
        return True

    def retry(self, status: Status | str, label: str | None = None) -> int:
        """Mark the records that ended with ``status`` (``failed``, ``infeasible`` or ``diverged``; of
        spec label ``label`` when given) ``lost``, so that the next run of their experiment trains them
        again: for trials a since-fixed bug failed. ``ok`` results are never reopened (rerunning the
        trials one dislikes is not evidence). Returns how many were reopened."""
        status = Status(status)
        if status in (Status.OK, Status.LOST):
            raise DesignSpaceError(
                f"{self.path}: retry --status {status}: only failed, infeasible or diverged trials are reopened "
                "(ok results stay; lost ones rerun anyway)"
            )
        keys = [r.key for r in self.records(status=status) if label is None or r.spec.label == label]
        if keys:
            sql = "UPDATE trials SET status=? WHERE key=? AND status=?"
            self._write([(sql, (str(Status.LOST), k, str(status))) for k in keys], "reopen trials")
        return len(keys)

    def get(self, key: str) -> TrialRecord | None:
        rows = self._execute("SELECT * FROM trials WHERE key=?", (key,))
        return _decode(rows[0]) if rows else None

    def records(self, keys: Iterable[str] | None = None, status: Status | str | None = None) -> list[TrialRecord]:
        """Records in insertion order: all of them, or those of ``keys`` (in that order, missing ones left out)."""
        if keys is None:
            where, params = ("WHERE status=?", (str(status),)) if status else ("", ())
            return [_decode(r) for r in self._execute(f"SELECT * FROM trials {where} ORDER BY id", params)]
        keys = list(keys)
        found: dict[str, TrialRecord] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            sql = f"SELECT * FROM trials WHERE key IN ({', '.join('?' * len(chunk))})"
            found.update({r["key"]: _decode(r) for r in self._execute(sql, chunk)})
        return [found[k] for k in keys if k in found and (status is None or found[k].status == Status(status))]

    def statuses(self, keys: Iterable[str] | None = None) -> dict[str, Status]:
        """Key -> status, cheaply (no spec decoding)."""
        rows = self._execute("SELECT key, status FROM trials")
        out = {r["key"]: Status(r["status"]) for r in rows}
        return out if keys is None else {k: out[k] for k in keys if k in out}

    def counts(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self._execute("SELECT status, COUNT(*) FROM trials GROUP BY status")}

    def to_dataframe(self, keys: Iterable[str] | None = None):
        """Records as a pandas DataFrame: spec fields, outcome fields, each metric as ``metric.<name>``."""
        import pandas as pd

        rows = []
        for r in self.records(keys):
            d = {"key": r.key, **{k: v for k, v in r.spec.to_dict().items() if k not in ("plan",)}}
            d.update({k: v for k, v in r.outcome().items() if k not in ("predictions", "traceback", "result")})
            d["design_id"] = r.spec.design_id
            d.update({f"metric.{k}": v for k, v in (d.pop("metrics") or {}).items()})
            rows.append(d)
        return pd.DataFrame(rows)

    # -- stages and notes ----------------------------------------------------------------------------
    def save_stage(self, name: str, position: int, component: str, state: dict) -> None:
        """A stage's state (its plan, rounds, decision) as the refiner keeps it; replaced whole."""
        self._write([("INSERT OR REPLACE INTO stages (name, position, component, state) VALUES (?, ?, ?, ?)",
                      (name, position, component, json.dumps(state, sort_keys=True)))], "save a stage")

    def stage(self, name: str) -> dict | None:
        rows = self._execute("SELECT state FROM stages WHERE name=?", (name,))
        return json.loads(rows[0]["state"]) if rows else None

    def stages(self) -> list[dict]:
        """Every saved stage as {name, position, component, state}, in position order."""
        rows = self._execute("SELECT * FROM stages ORDER BY position, name")
        return [{**dict(r), "state": json.loads(r["state"])} for r in rows]

    def set_note(self, key: str, value: Any) -> None:
        """An experiment-level fact (one of ``NOTES``), replaced whole."""
        self._write([("INSERT OR REPLACE INTO notes (key, value) VALUES (?, ?)",
                      (_note_key(key), json.dumps(value, sort_keys=True)))], "save a note")

    def note(self, key: str, default: Any = None) -> Any:
        rows = self._execute("SELECT value FROM notes WHERE key=?", (_note_key(key),))
        return default if not rows else json.loads(rows[0]["value"])

    def log_session(self, session: dict) -> None:
        """Add or update (same ``id``) one training session: who trained, when, on what load."""
        sessions = [s for s in self.note("sessions", []) if s.get("id") != session["id"]]
        self.set_note("sessions", sorted([*sessions, session], key=lambda s: s["started"]))


def busy_and_span(records) -> tuple[float, float]:
    """(seconds of wall time with at least one trial running, seconds from the first trial's start to
    the last one's end). A run resumed across days has a long span and the same busy time: the busy time
    is what it cost."""
    from datetime import datetime

    spans = sorted((datetime.fromisoformat(r.started_at), datetime.fromisoformat(r.ended_at))
                   for r in records if r.started_at and r.ended_at)
    busy, edge = 0.0, None
    for a, b in spans:
        if edge is None or a > edge:
            busy, edge = busy + (b - a).total_seconds(), b
        elif b > edge:
            busy, edge = busy + (b - edge).total_seconds(), b
    span = (max(b for _, b in spans) - spans[0][0]).total_seconds() if spans else 0.0
    return busy, span


def describe_wall(records, unit: str = "hours") -> str:
    """'0.76 hours of wall time with trials running' (and the span where pauses make it longer)."""
    scale = 3600 if unit == "hours" else 60
    busy, span = busy_and_span(records)
    text = f"{busy / scale:.2f} {unit} of wall time with trials running"
    return text + (f" (first start to last end {span / scale:.2f} {unit}, pauses included)" if span > 1.05 * busy + 60 else "")


def describe_sessions(sessions: list[dict], starts: list[str]) -> str:
    """One sentence on the machine load while trials trained (from ``TrialStore.log_session``);
    ``starts``: the trials' start times. A trial belongs to the last session that began before it, so a
    session killed before it logged its end still counts its trials."""
    from datetime import datetime

    begun = sorted(datetime.fromisoformat(x["started"]) for x in sessions)
    times = [datetime.fromisoformat(t) for t in starts if t]
    before = sum(not begun or t < begun[0] for t in times)
    unlogged = (f"the machine load of {before} trial(s) trained before sessions were logged is not recorded"
                if before else "")
    if not sessions:
        return unlogged or "no trials trained"
    loads = [x[k][0] for x in sessions for k in ("load_start", "load_end") if x.get(k)]
    hosts = sorted({f"{x['host']} ({x['cores']} cores)" for x in sessions})
    cut = sum("ended" not in x for x in sessions)
    return (f"{len(times) - before} trial(s) trained in {len(sessions)} logged session(s) on {', '.join(hosts)}, "
            f"1-minute load average {min(loads):.2f} to {max(loads):.2f} at their starts and ends"
            + (f" ({cut} session(s) without a logged end: stopped, or still running)" if cut else "")
            + (f"; {unlogged}" if unlogged else ""))


#: The experiment-level facts a store keeps: what the refinement (or S3PET run) was, and what it found.
NOTES = ("experiment", "final_design", "s3pet_experiment", "sessions")


def _note_key(key: str) -> str:
    if key not in NOTES:
        from .errors import invalid

        raise invalid("store note", key, NOTES)
    return key
