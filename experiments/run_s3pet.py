"""Run the S3PET experiments of issue 14 one after the other, then write results/s3pet/README.md.

    python experiments/run_s3pet.py                       # experiments/s3pet_sst2.yaml, then s3pet_stsb.yaml
    python experiments/run_s3pet.py experiments/s3pet_stsb.yaml --data-dir D
    python experiments/run_s3pet.py --report              # only rewrite the tables from the stores

Each experiment runs through ``designspace search``'s code (its own trial store, two single-threaded
workers); a rerun resumes where the last one stopped. Every invocation is logged in
results/s3pet/invocations.jsonl. The README is the header below, then each experiment's tables
(written from its store by ``designspace.s3pet.report``), then the calibration runs found under
results/s3pet/ (``--report`` re-renders a copied store with the ids it holds, e.g. one from a GPU
machine).
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "results" / "s3pet"
EXPERIMENTS = ["experiments/s3pet_sst2.yaml", "experiments/s3pet_stsb.yaml"]
#: Other runs whose tables the README carries: (experiment file, results folder, title, how it was run).
OTHER_RUNS = [
    ("experiments/s3pet_sst2.yaml", "h100_sst2", "SST-2, the same experiment on one H100",
     "designspace search experiments/s3pet_sst2.yaml --output results/s3pet/h100_sst2 (one H100, n_jobs 7; "
     "MiniLM weights carried as fp16 and loaded as fp32)"),
    ("experiments/s3pet_stsb.yaml", "h100_stsb", "STS-B, the same experiment on one H100",
     "designspace search experiments/s3pet_stsb.yaml --output results/s3pet/h100_stsb (one H100, n_jobs 7; "
     "MiniLM weights carried as fp16 and loaded as fp32)"),
    ("experiments/s3pet_calibration.yaml", "calibration", "Calibration: 3 seeds, both tasks, 1-epoch retraining",
     "designspace search experiments/s3pet_calibration.yaml --output results/s3pet/calibration (one H100; code "
     "before candidates larger than the budget lost their gate, see Notes)"),
    ("experiments/s3pet_smoke.yaml", "smoke", "Smoke run on this CPU: cost of a search",
     "designspace search experiments/s3pet_smoke.yaml (the shared 2-core CPU)"),
]

HEADER = """# S3PET (S3Delta) structure search on MiniLM-L6: searched vs random vs budget-matched manual structures

Issue 14. Written by `python experiments/run_s3pet.py` from the trial stores; the reading of the
tables at the end (Notes) is results/s3pet/NOTES.md. The issue-7 results this replaces (a regime with no
headroom, searched = random everywhere) are in the git history before this README.

## How to run

    python experiments/run_s3pet.py            # SST-2 then STS-B, 2 single-threaded workers, resumable
    designspace search experiments/s3pet_sst2.yaml [--data-dir D] [--output O]   # one experiment

Cost on this 2-core CPU (one retraining of SST-2 ~27 CPU-s, of STS-B for 3 epochs ~135 CPU-s; a
search ~4.9 retrainings of SST-2, smoke run below): `s3pet_sst2.yaml` 20 searches + 120 retrainings
~1.6 CPU-hours; `s3pet_stsb.yaml` 10 searches + 70 retrainings ~3.4 CPU-hours; together ~2.5 hours
on two idle cores, about twice that while other jobs share them. The 5-seed tables below the CPU
sections are the same two files run on one H100: the results of record so far (the CPU runs were not
started in the session that built this; when they run, they land in the CPU sections).

Invocations so far (results/s3pet/invocations.jsonl):
"""


def invocations() -> list[dict]:
    path = OUT / "invocations.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def log_invocation(entry: dict) -> None:
    entries = [e for e in invocations() if e.get("started") != entry["started"]] + [entry]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "invocations.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))


def rerender(path: str, folder: Path, how: str) -> str | None:
    """Tables of the store in ``folder`` (written by ``path``), rendered by this checkout."""
    from designspace.s3pet.experiment import SearchExperiment, SearchRunner
    from designspace.s3pet.report import collect, write_outputs
    from designspace.store import TrialStore

    store_path = folder / "trials.sqlite"
    if not store_path.is_file():
        return None
    exp = SearchExperiment.load(path, output=str(folder.relative_to(ROOT)))
    runner = SearchRunner(exp, progress=False)
    runner.prepare()
    store = TrialStore(store_path, readonly=True)
    records = store.records()
    if records:  # keys carry the fingerprints of the machine that ran them
        runner.ids["backbone"] = records[0].spec.backbone_id
        runner.ids["data"].update({r.spec.task: r.spec.data_id for r in records})
    searches = runner.search_cells()
    found = {r.key: r for r in store.records([c["spec"].key for c in searches])}
    cells = collect(store, searches, runner.retrain_cells(found))
    store.close()
    for extra in (folder / "trials.sqlite-shm", folder / "trials.sqlite-wal"):
        if extra.is_file() and (extra.name.endswith("shm") or not extra.stat().st_size):
            extra.unlink()  # left by the read-only connection; nothing in them
    write_outputs(exp, runner.budgets, runner.candidates, cells, how, 0.0)
    return (folder / "README.md").read_text()


def demote(text: str) -> str:
    """One heading level down, the title dropped (it becomes a section of the README)."""
    lines = text.splitlines()
    return "\n".join(("#" + x if x.startswith("#") else x) for x in lines[1:]).strip()


def write_readme() -> Path:
    parts = [HEADER]
    for e in invocations():
        if not any(x.startswith("experiments/s3pet_") for x in e.get("experiments", [])):
            continue  # issue 7's runs: listed in results/s3pet/sst2 etc.
        parts.append(f"- `{e['command']}` started {e['started']} UTC, {e['minutes']} min, {e['status']}")
    for path in EXPERIMENTS:
        folder = OUT / Path(path).stem.replace("s3pet_", "search_")
        text = rerender(path, folder, f"python experiments/run_s3pet.py ({path})")
        parts.append(f"\n## {Path(path).stem}: `{path}`\n")
        parts.append(demote(text) if text else "Not run yet.")
    for path, name, title, how in OTHER_RUNS:
        text = rerender(path, OUT / name, how)
        if text:
            parts.append(f"\n## {title} (results/s3pet/{name})\n")
            parts.append(demote(text))
    notes = OUT / "NOTES.md"
    if notes.is_file():
        parts.append("\n## Notes\n\n" + notes.read_text().split("\n", 1)[1].strip())
    readme = OUT / "README.md"
    readme.write_text("\n".join(parts).rstrip() + "\n")
    return readme


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiments", nargs="*", default=EXPERIMENTS)
    p.add_argument("--data-dir")
    p.add_argument("--report", action="store_true", help="only rewrite results/s3pet/README.md from the stores")
    args = p.parse_args(argv)
    import os

    os.chdir(ROOT)  # paths in the README relative to the repository
    if not args.report:
        from designspace.s3pet import run_search_experiment

        command = "python " + " ".join(shlex.quote(a) for a in [str(Path(sys.argv[0])), *sys.argv[1:]])
        started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
        t0, status = time.perf_counter(), "complete"
        try:
            for path in args.experiments:
                folder = OUT / Path(path).stem.replace("s3pet_", "search_")
                run_search_experiment(path, data_dir=args.data_dir, output=str(folder))
        except KeyboardInterrupt:
            status = "stopped by the user (rerun the same command to resume)"
        finally:
            log_invocation({"command": command, "started": started, "minutes": round((time.perf_counter() - t0) / 60, 1),
                            "status": status, "experiments": list(args.experiments)})
    print(write_readme())
    return 0


if __name__ == "__main__":
    sys.exit(main())
