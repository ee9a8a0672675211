"""The trial store: one SQLite file (WAL mode, no server) holding one row per trial.

One driver process writes; status commands and plots may read at the same time (WAL lets
readers see the last committed state while a write is in flight). Every ``record`` is its own
committed transaction, so killing the driver loses at most the trial it was writing.

A file that is not ours (garbage bytes, or SQLite without our marker) is refused and never
touched: it is validated through a read-only connection before anything opens it for writing.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from designspace.errors import DesignSpaceError, invalid

if TYPE_CHECKING:
    import pandas as pd

APP = "designspace-trials"
SCHEMA_VERSION = 1

STATUSES = ("ok", "failed", "diverged", "infeasible")
DONE_STATUSES = ("ok", "diverged", "infeasible")
KEY = ("stage", "design_id", "task", "seed", "regime_id")

# Columns callers write (besides the store-managed `id` and `attempts`), with their SQL types.
COLUMNS: dict[str, str] = {
    "experiment": "TEXT",
    "stage": "TEXT NOT NULL",
    "design_id": "TEXT NOT NULL",
    "design_json": "TEXT",
    "task": "TEXT NOT NULL",
    "seed": "INTEGER NOT NULL",
    "regime_id": "TEXT NOT NULL",
    "regime_json": "TEXT",
    "status": "TEXT NOT NULL",
    "metrics_json": "TEXT",
    "score": "REAL",
    "trainable_params": "INTEGER",
    "plan_params": "INTEGER",
    "seconds_train": "REAL",
    "seconds_eval": "REAL",
    "peak_mem_mb": "REAL",
    "tokens": "INTEGER",
    "error": "TEXT",
    "traceback": "TEXT",
    "versions_json": "TEXT",
    "worker": "TEXT",
    "started_at": "TEXT",
    "ended_at": "TEXT",
}
# JSON columns are read and written under their short name (`design`, `metrics`...) as Python objects.
JSON_FIELDS = {c[: -len("_json")]: c for c in COLUMNS if c.endswith("_json")}
REQUIRED = (*KEY, "status")
_KEY_WHERE = " AND ".join(f"{k}=?" for k in KEY)

_SQLITE_HEADER = b"SQLite format 3\x00"

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS trials (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    attempts INTEGER NOT NULL DEFAULT 1,
    {", ".join(f"{c} {t}" for c, t in COLUMNS.items())},
    UNIQUE ({", ".join(KEY)})
);
CREATE INDEX IF NOT EXISTS trials_stage_status ON trials (stage, status);
"""


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class TrialStore:
    """Trials of one experiment in ``path`` (callers choose it, e.g. ``results/<experiment>/trials.sqlite``).

    The file is opened on first use (or by ``open()`` / ``with``); a missing file and its parent
    folders are created then, unless ``create=False``.
    """

    def __init__(self, path: str | Path, create: bool = True):
        self.path = Path(path)
        self.create = create  # readers (status, plots) pass False so a typo does not make an empty store
        self._conn: sqlite3.Connection | None = None
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
            f"{self.path}: {why}; the file was left untouched - pass another --store or move the file away"
        )

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
            ro = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
            try:
                tables = {r[0] for r in ro.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                meta = dict(ro.execute("SELECT key, value FROM meta")) if "meta" in tables else {}
            finally:
                ro.close()
        except sqlite3.DatabaseError as e:
            raise self._refuse(f"is not a readable SQLite database ({e})") from None
        if not tables:
            return True
        if meta.get("app") != APP:
            raise self._refuse(
                f"is a SQLite database but not a designspace trial store (no app={APP!r} marker)"
            )
        version = int(meta.get("schema_version", 0))
        if version > SCHEMA_VERSION:
            raise DesignSpaceError(
                f"{self.path}: schema_version={version} is newer than this designspace supports "
                f"({SCHEMA_VERSION}); upgrade designspace or pass another --store"
            )
        if version < SCHEMA_VERSION:
            raise DesignSpaceError(
                f"{self.path}: schema_version={version} is older than {SCHEMA_VERSION} and has no migration; "
                "pass another --store or move the file away"
            )
        return False

    def _connect(self) -> sqlite3.Connection:
        if not self.path.exists() and not self.create:
            raise DesignSpaceError(
                f"{self.path}: store does not exist; run the experiment first or pass another --store"
            )
        fresh = self._check_existing() if self.path.exists() else True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: each write below opens and commits its own explicit transaction.
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        try:
            if fresh:
                # Schema and marker land in one transaction, so a crash never leaves a half-made store.
                conn.executescript(
                    "BEGIN IMMEDIATE;"
                    + _SCHEMA
                    + f"INSERT OR IGNORE INTO meta VALUES ('app', '{APP}'), ('schema_version', '{SCHEMA_VERSION}');"
                    + "COMMIT;"
                )
            conn.execute("PRAGMA journal_mode=WAL")
            # A trial costs seconds to minutes; an fsync per commit is cheap insurance against power loss too.
            conn.execute("PRAGMA synchronous=FULL")
        except BaseException:
            conn.close()
            raise
        return conn

    @property
    def _db(self) -> sqlite3.Connection:
        return self.open()._conn  # type: ignore[return-value]

    # -- writing ---------------------------------------------------------------------------------

    def _encode(self, row: dict[str, Any]) -> dict[str, Any]:
        for short, col in JSON_FIELDS.items():
            if short in row and col in row:
                raise invalid("row key", col, f"{short} or {col}, not both", source=str(self.path))
        out: dict[str, Any] = {}
        for name, value in row.items():
            if name in JSON_FIELDS:
                out[JSON_FIELDS[name]] = None if value is None else json.dumps(value, sort_keys=True)
            elif name in COLUMNS:
                if name.endswith("_json") and value is not None and not isinstance(value, str):
                    value = json.dumps(value, sort_keys=True)
                out[name] = value
            else:
                allowed = "columns " + ", ".join([*COLUMNS, *JSON_FIELDS])
                if name in ("id", "attempts"):
                    allowed = f"{name} is managed by the store; drop it"
                raise invalid("row key", name, allowed, source=str(self.path))
        for name in REQUIRED:
            if out.get(name) is None:
                raise invalid(
                    name, None, f"a value for every key field {', '.join(REQUIRED)}", str(self.path)
                )
        if out["status"] not in STATUSES:
            raise invalid("status", out["status"], STATUSES, source=str(self.path))
        out["seed"] = int(out["seed"])
        out.setdefault("ended_at", _utc_now())
        return out

    def record(self, row: dict[str, Any]) -> bool:
        """Insert a trial, or replace the row of its key unless that row is 'ok'.

        Returns False (and changes nothing) when an 'ok' row already holds the key. Replacing a
        non-ok row increments its ``attempts``; every column not in ``row`` is reset to NULL.
        JSON fields may be given decoded (``design={...}``) or as ``design_json`` strings.
        """
        values = self._encode(row)
        key = tuple(values[k] for k in KEY)
        cols = list(COLUMNS)
        params = [values.get(c) for c in cols]
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                old = db.execute(
                    f"SELECT id, status, attempts FROM trials WHERE {_KEY_WHERE}",
                    key,
                ).fetchone()
                if old is None:
                    db.execute(
                        f"INSERT INTO trials ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                        params,
                    )
                elif old["status"] == "ok":
                    db.execute("ROLLBACK")
                    return False
                else:
                    db.execute(
                        f"UPDATE trials SET attempts=?, {', '.join(f'{c}=?' for c in cols)} WHERE id=?",
                        [old["attempts"] + 1, *params, old["id"]],
                    )
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        return True

    # -- reading ---------------------------------------------------------------------------------

    def _select(self, what: str, stage: str | None, statuses: Iterable[str] | str | None, tail: str = ""):
        where, params = [], []
        if stage is not None:
            where.append("stage=?")
            params.append(stage)
        if statuses is not None:
            statuses = (statuses,) if isinstance(statuses, str) else tuple(statuses)
            where.append(f"status IN ({', '.join('?' * len(statuses))})")
            params.extend(statuses)
        sql = f"SELECT {what} FROM trials" + (f" WHERE {' AND '.join(where)}" if where else "") + tail
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def done_keys(
        self, stage: str | None = None, statuses: Iterable[str] = DONE_STATUSES
    ) -> set[tuple[str, str, str, int, str]]:
        """Keys ``(stage, design_id, task, seed, regime_id)`` that need no rerun ('failed' ones are retried)."""
        return {tuple(r) for r in self._select(", ".join(KEY), stage, statuses)}

    def attempts(self, key: tuple) -> int:
        """How many times ``key`` was recorded (0 if never), so callers can cap retries."""
        with self._lock:
            r = self._db.execute(f"SELECT attempts FROM trials WHERE {_KEY_WHERE}", tuple(key)).fetchone()
        return 0 if r is None else r[0]

    def trials(
        self, stage: str | None = None, status: str | Iterable[str] | None = None
    ) -> list[dict[str, Any]]:
        """Rows in insertion order; JSON columns come back decoded under their short names."""
        out = []
        for r in self._select("*", stage, status, " ORDER BY id"):
            d = dict(r)
            for short, col in JSON_FIELDS.items():
                raw = d.pop(col)
                d[short] = None if raw is None else json.loads(raw)
            out.append(d)
        return out

    def to_dataframe(self, stage: str | None = None) -> pd.DataFrame:
        """Trials as a pandas DataFrame, each metric expanded into a ``metric.<name>`` column."""
        import pandas as pd

        rows = self.trials(stage)
        base = ["id", "attempts", *(c for c in COLUMNS if c not in JSON_FIELDS.values()), *JSON_FIELDS]
        for row in rows:
            for name, value in (row.pop("metrics") or {}).items():
                row[f"metric.{name}"] = value
        base.remove("metrics")
        return pd.DataFrame(rows, columns=base + sorted({k for r in rows for k in r} - set(base)))

    def stages(self) -> list[str]:
        """Stage names in the order they were first recorded."""
        return [r[0] for r in self._select("stage", None, None, " GROUP BY stage ORDER BY MIN(id)")]

    def counts(self, stage: str | None = None) -> dict[str, int]:
        """Number of trials per status (all stages when ``stage`` is None)."""
        return {r[0]: r[1] for r in self._select("status, COUNT(*)", stage, None, " GROUP BY status")}

    # -- experiment-level info -------------------------------------------------------------------

    def meta_get(self, key: str, default: Any = None) -> Any:
        """A JSON value stored by ``meta_set`` (e.g. a stage's decision), or ``default``."""
        with self._lock:
            r = self._db.execute("SELECT value FROM kv WHERE key=?", (key,)).fetchone()
        return default if r is None else json.loads(r[0])

    def meta_set(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable ``value`` under ``key`` (replacing any previous one), committed at once."""
        encoded = json.dumps(value, sort_keys=True)
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (key, encoded))
