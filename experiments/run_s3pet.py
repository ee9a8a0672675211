"""Run the S3PET experiments (issue 7) and merge their tables into results/s3pet/.

    python experiments/run_s3pet.py experiments/search_s3pet_sst2.yaml experiments/search_s3pet_rte_mrpc.yaml

Each experiment file runs in its own single-threaded process (two processes use the two cores
without a spinning thread pool); every finished retraining lands in that experiment's runs.csv, and
this script merges them into results/s3pet/{runs.csv, summary.csv, README.md} every 30 s, so a run
stopped by ``--deadline-min`` still leaves a table. A rerun resumes: finished rows are skipped.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from designspace.s3pet.experiment import (
    FIELDS,
    cost_multiples,
    load_search_experiment,
    read_rows,
    write_rows,
    write_tables,
)

ROOT = Path(__file__).resolve().parent.parent


def invocations(out: Path) -> list[dict]:
    """What ran into ``out``: one JSON line per invocation (command, start, minutes, status)."""
    path = out / "invocations.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def log_invocation(out: Path, entry: dict) -> None:
    entries = [e for e in invocations(out) if e["started"] != entry["started"]] + [entry]
    (out / "invocations.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))


def merge(out: Path, experiments: list[dict]) -> list[dict]:
    """Tables over these experiments and every one an earlier invocation ran into ``out``."""
    paths = [e["path"] for e in experiments]
    for inv in invocations(out):
        for p in inv.get("experiments", []):
            if p not in paths:
                paths.append(p)
                experiments = [*experiments, {**load_search_experiment(p), "path": p}]
    rows, methods = [], ["s3pet"]
    for exp in experiments:
        rows += read_rows(Path(exp["output"]) / "runs.csv")
        methods += [m for m in exp["baselines"] if m not in methods]
    # One row per (task, budget, seed, method), the first finished, when two experiments overlap.
    rows = list({(r["task"], r["budget"], r["seed"], r["method"]): r for r in reversed(rows)}.values())[::-1]
    if not rows:
        return rows
    write_rows(out / "runs.csv", [{k: r.get(k, "") for k in FIELDS} for r in rows])
    done = {(r["task"], r["budget"], r["seed"], r["method"]) for r in rows}
    missing = []
    for exp in experiments:
        for task, _ in exp["tasks"]:
            for budget, _ in exp["budgets"]:
                for seed in exp["seeds"]:
                    for m in ["s3pet", *exp["baselines"]]:
                        if m in ("s3pet", "random") or seed in exp["baseline_seeds"]:
                            if (task, str(budget), str(seed), m) not in done:
                                missing.append((task, budget, seed, m))
    gaps: dict[tuple, set] = {}
    for task, budget, seed, m in dict.fromkeys(missing):
        gaps.setdefault((task, budget), set()).add(f"{m}/s{seed}")
    missing = [f"{t} {b:.2%} ({', '.join(sorted(v))})" for (t, b), v in gaps.items()]
    runs = [f"- `{e['command']}` (from `{ROOT.name}/`), started {e['started']} UTC, {e['minutes']:.1f} min wall "
            f"time, {e['status']}" for e in invocations(out)]
    write_tables(out, rows, methods, [
        "# S3PET (S3Delta) structure search on MiniLM-L6: searched vs random vs manual structures",
        "",
        "Produced by (shared 2-core CPU, one thread per experiment process):",
        "",
        *runs,
        "",
        "Experiment files: " + ", ".join(f"`{e['path']}`" for e in experiments) + ". Rows: `runs.csv`; "
        "structures, gate tables (alpha, p), heat-map data and plots: `*/structures/`.",
        "",
        "Missing (not run before the stop): " + ("; ".join(missing) if missing else "none") + ".",
    ])
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiments", nargs="+")
    ap.add_argument("--output", default="results/s3pet")
    ap.add_argument("--deadline-min", type=float, default=None, help="stop the runs after this many minutes")
    ap.add_argument("--merge-only", action="store_true", help="only merge the experiments' tables")
    args = ap.parse_args(argv)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    experiments = [{**load_search_experiment(p), "path": p} for p in args.experiments]
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    if args.merge_only:
        merge(out, experiments)
        print(f"merged into {out}/README.md")
        return 0
    started = time.perf_counter()
    entry = {"command": command, "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"), "minutes": 0.0,
             "status": "running", "experiments": args.experiments}

    def note(status: str) -> None:
        log_invocation(out, {**entry, "minutes": round((time.perf_counter() - started) / 60, 1), "status": status})
        merge(out, experiments)

    procs = []
    for exp in experiments:
        Path(exp["output"]).mkdir(parents=True, exist_ok=True)
        log = open(Path(exp["output"]) / "log.txt", "a")
        code = f"from designspace.s3pet import run_search_experiment as r; r({exp['path']!r})"
        procs.append(subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT))
    status = "complete"
    while any(p.poll() is None for p in procs):
        time.sleep(30)
        note("running")
        if args.deadline_min and time.perf_counter() - started > 60 * args.deadline_min:
            status = f"stopped at the {args.deadline_min:g}-minute deadline"
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            for p in procs:
                p.wait()
    failed = [e["path"] for e, p in zip(experiments, procs, strict=True) if p.returncode not in (0, -15)]
    if failed:
        status = f"failed: {failed} (see log.txt in their output folders)"
    note(status)
    rows = read_rows(out / "runs.csv")
    mult = cost_multiples(rows)
    if mult:
        print(f"search cost: {sum(mult) / len(mult):.2f}x one retraining (mean over {len(mult)} searches)")
    print(f"{status}; tables in {out}/README.md")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
