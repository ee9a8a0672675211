"""What the result-producing scripts share: run specs through a resumable store, say what a run cost
and where, and export the store as CSV next to the report."""

from __future__ import annotations

import shlex
import sys
import time
from datetime import datetime
from pathlib import Path

from .compare import mean_sd
from .pool import evaluate
from .store import TrialStore, describe_sessions
from .trial import TrialRecord, TrialSpec


class Run:
    """One results folder: its store, the command that fills it, and the machine's load along the way."""

    def __init__(self, out_dir: str | Path, title: str):
        self.out = Path(out_dir)
        self.title = title
        self.store = TrialStore(self.out / "trials.sqlite")
        self.command = " ".join(shlex.quote(a) for a in ["python", *sys.argv])
        self.t0 = time.perf_counter()

    def evaluate(self, specs: list[TrialSpec], label: str, n_jobs: int | None = None) -> list[TrialRecord]:
        """Train what the store lacks (resumable; one driver per store) and return every spec's record."""
        with self.store.driver_lock():
            return evaluate(specs, self.store, n_jobs=n_jobs, label=label)

    def header(self, records: list[TrialRecord]) -> list[str]:
        cpu = sum(r.seconds_train + r.seconds_eval for r in records) / 3600
        times = [datetime.fromisoformat(t) for r in records for t in (r.started_at, r.ended_at) if t]
        span = (max(times) - min(times)).total_seconds() / 3600 if times else 0.0
        return [
            f"# {self.title}", "",
            f"Command: `{self.command}` (resumable: the store is `{self.store.path}`; `{self.out}/trials.csv` is its "
            "export). Every number below is read from the store.", "",
            f"Cost: {len(records)} trials, {cpu:.2f} CPU-hours of training and scoring; {span:.2f} hours from the first "
            f"trial's start to the last one's end; {describe_sessions(self.store.note('sessions', []), [r.started_at for r in records])}; devices: "
            f"{', '.join(sorted({r.device for r in records if r.device}))}.",
            "",
        ]

    def finish(self, lines: list[str]) -> Path:
        """Write README.md and trials.csv; return the README's path."""
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / "README.md"
        path.write_text("\n".join(lines) + "\n")
        self.store.to_dataframe().to_csv(self.out / "trials.csv", index=False)
        return path


def cell(values) -> str:
    """'81.23 ± 0.45 (n=5)' in points, or '-'."""
    m, sd = mean_sd(list(values))
    if m is None:
        return "-"
    return f"{m:.2f}" + (f" ± {sd:.2f}" if sd is not None else "") + f" (n={len(list(values))})"


def points(record: TrialRecord) -> float | None:
    return None if not record.ok else 100.0 * record.score
