"""Designs per hour with 1 worker x 2 threads versus 2 workers x 1 thread (loky), on real data.

    python benchmarks/pool_workers.py                      # MiniLM-L6, SST-2, 6 designs per layout
    python benchmarks/pool_workers.py --train-rows 5000    # a copy of the first 5000 SST-2 rows

Each layout runs the same designs into a fresh store, so both pay their worker start-up and
backbone loads as a real stage would. The wall time includes them; "per trial" is the mean
time inside a worker. Other processes on the machine skew both numbers: run it on a quiet box,
or run it twice and compare.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

from designspace.pool import evaluate
from designspace.regime import Regime
from designspace.space import Design
from designspace.store import TrialStore
from designspace.tasks import get_task, resolve_data_dir
from designspace.trial import TrialSpec

DESIGNS = (
    Design(),
    Design(strategies=(("adapter",),) * 4),
    Design(strategies=(("bitfit",),) * 4),
    Design(strategies=(("prefix",),) * 4),
    Design(grouping="uniform", allocation="increasing", strategies=(("lora", "adapter"),) * 4),
    Design(tuned_groups=(2, 3), strategies=(("adapter", "bitfit"),) * 4),
)
LAYOUTS = "1x2,2x1"  # workers x threads per worker, run in this order


def truncated_copy(task: str, rows: int, out: Path) -> str:
    """The task's folder with only the first ``rows`` training rows (dev unchanged)."""
    spec = get_task(task)
    src = resolve_data_dir() / spec.folder
    (out / spec.folder).mkdir(parents=True)
    lines = (src / "train.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    (out / spec.folder / "train.tsv").write_text("".join(lines[: rows + 1]), encoding="utf-8")
    shutil.copy(src / spec.file_name("dev"), out / spec.folder / spec.file_name("dev"))
    return str(out)


def run_layout(workers: int, threads: int, specs: list[TrialSpec], folder: Path) -> dict:
    store = TrialStore(folder / f"{workers}x{threads}.sqlite")
    t0 = time.perf_counter()
    rows = evaluate(specs, store, backend="loky", n_jobs=workers, threads=threads)
    wall = time.perf_counter() - t0
    bad = [(r.spec.design_id, str(r.status), r.error) for r in rows if not r.ok]
    if bad:
        raise SystemExit(f"{workers}x{threads}: not every trial finished ok: {bad}")
    spans = [(datetime.fromisoformat(r.ended_at) - datetime.fromisoformat(r.started_at)).total_seconds() for r in rows]
    return {"wall": wall, "per_hour": len(rows) / wall * 3600, "per_trial": statistics.mean(spans)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="minilm-l6")
    p.add_argument("--task", default="sst2")
    p.add_argument("--n-train", type=int, default=500)
    p.add_argument("--n-dev", type=int, default=200)
    p.add_argument("--designs", type=int, default=len(DESIGNS), help=f"at most {len(DESIGNS)}")
    p.add_argument("--train-rows", type=int, help="use a copy of only the first N training rows")
    p.add_argument("--data-dir", help="GLUE folder (default: the usual lookup)")
    p.add_argument("--layouts", default=LAYOUTS, help="order matters on a busy machine; swap it to check")
    args = p.parse_args(argv)
    layouts = [tuple(int(x) for x in layout.split("x")) for layout in args.layouts.split(",")]

    regime = Regime(n_train=args.n_train, n_dev=args.n_dev)
    with tempfile.TemporaryDirectory(prefix="pool-bench-") as tmp:
        folder = Path(tmp)
        data_dir = args.data_dir
        if args.train_rows:
            data_dir = truncated_copy(args.task, args.train_rows, folder / "glue")
        results = {}
        for workers, threads in layouts:
            specs = [
                TrialSpec(task=args.task, design=d, regime=regime, backbone=args.backbone, data_dir=data_dir)
                for d in DESIGNS[: args.designs]
            ]
            results[workers, threads] = r = run_layout(workers, threads, specs, folder)
            print(
                f"{workers} worker(s) x {threads} thread(s): {r['per_hour']:.0f} designs/hour "
                f"({len(specs)} in {r['wall']:.1f} s, {r['per_trial']:.1f} s per trial in a worker)",
                flush=True,
            )
    if {(1, 2), (2, 1)} <= results.keys():
        print(f"ratio 2x1 / 1x2: {results[2, 1]['per_hour'] / results[1, 2]['per_hour']:.2f}")


if __name__ == "__main__":
    main()
