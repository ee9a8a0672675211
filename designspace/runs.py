"""What the result-producing scripts share: run specs through a resumable store, say what a run cost
and where, and export the store as CSV next to the report."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

from .compare import mean_sd
from .pool import evaluate
from .store import TrialStore, describe_sessions, describe_wall
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
        # A --report rewrite trains nothing: name the command that trained, and the rewrite beside it.
        trained = " ".join(shlex.quote(a) for a in ["python", *sys.argv] if a != "--report")
        rewritten = f"; this file was rewritten from the store by `{self.command}`" if trained != self.command else ""
        return [
            f"# {self.title}", "",
            f"Command: `{trained}` (resumable: the store is `{_shown(self.store.path)}`; `{_shown(self.out)}/trials.csv` "
            f"is its export{rewritten}). Every number below is read from the store.", "",
            f"Cost: {len(records)} trials, {cpu:.2f} CPU-hours of training and scoring; {describe_wall(records)}; "
            f"{describe_sessions(self.store.note('sessions', []), [r.started_at for r in records])}; devices: "
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


def _shown(path) -> str:
    """A path as a reader of the committed file can use it: relative to the working folder when inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def cell(values) -> str:
    """'81.23 ± 0.45 (n=5)' in points, or '-'."""
    m, sd = mean_sd(list(values))
    if m is None:
        return "-"
    return f"{m:.2f}" + (f" ± {sd:.2f}" if sd is not None else "") + f" (n={len(list(values))})"


def points(record: TrialRecord) -> float | None:
    return None if not record.ok else 100.0 * record.score
