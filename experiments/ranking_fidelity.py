"""Ranking fidelity (issue 16): does the brief regime rank designs as a 5x longer one does? The premise
of the paper's low-compute regime, checked on this machine's scale.

    python experiments/ranking_fidelity.py        # resumable; about half an hour on 2 cores

24 designs drawn from the paper's full space (seed 0). Brief: the refinement's regime (1,000 SST-2
examples x 1 epoch, max length 64), scored on the 1,000-example selection split, mean of seeds 0 and 1
(what a paired stage sees of a design). Long: 5,000 examples x 1 epoch, max length 128, scored on GLUE
dev, mean of seeds 0 and 1. Spearman's rho between the two rankings with a Fisher-z interval
(Bonett-Wright variance; its coverage at n = 20 is simulated in tests/test_compare.py); also one brief
seed against the other (how much one seed alone ranks).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from designspace import DesignSpace
from designspace.compare import spearman
from designspace.regime import Regime
from designspace.runs import Run, points
from designspace.trial import TrialSpec

ROOT = Path(__file__).resolve().parents[1]
BRIEF = Regime(n_train=1000, max_length=64)
LONG = Regime(n_train=5000, max_length=128)
SEEDS = (0, 1)
N_DESIGNS = 24


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default=str(ROOT / "results" / "fidelity"))
    p.add_argument("--jobs", type=int)
    p.add_argument("--report", action="store_true")
    a = p.parse_args(argv)
    designs = DesignSpace().sample(N_DESIGNS, seed=0)
    brief = [TrialSpec(task="sst2", design=d, seed=s, regime=BRIEF, eval_split="select", n_select=1000,
                       label="brief") for d in designs for s in SEEDS]
    long = [TrialSpec(task="sst2", design=d, seed=s, regime=LONG, label="long") for d in designs for s in SEEDS]
    run = Run(a.output, "Ranking fidelity: the brief regime against a 5x longer one (SST-2, MiniLM-L6)")
    if not a.report:
        run.evaluate(brief, "brief", a.jobs)
        run.evaluate(long, "long", a.jobs)
    records = run.store.records([s.key for s in brief + long])
    score = {(r.spec.label, r.spec.design_id, r.spec.seed): points(r) for r in records}
    rows = []
    for d in designs:
        b = [score.get(("brief", d.id, s)) for s in SEEDS]
        g = [score.get(("long", d.id, s)) for s in SEEDS]
        if None not in b + g:
            rows.append((d, sum(b) / 2, sum(g) / 2, b))
    lines = run.header(records) + [
        f"{N_DESIGNS} designs from the full space (seed 0), budget 0.5 %. Brief: {BRIEF.n_train} examples x 1 epoch, "
        f"max length {BRIEF.max_length}, selection split (1,000); long: {LONG.n_train} x 1 epoch, max length "
        f"{LONG.max_length}, GLUE dev (872). Scores are accuracy x 100, mean of seeds 0 and 1.", ""]
    if len(rows) >= 4:
        both = spearman([r[1] for r in rows], [r[2] for r in rows])
        one = spearman([r[3][0] for r in rows], [r[3][1] for r in rows])
        holds = "holds" if both["ci"][0] > 0.5 else "does not hold" if both["ci"][1] < 0.5 else "is not resolved"
        lines += [
            f"**Spearman's rho, brief (mean of 2 seeds) vs long: {both['rho']:.2f} (95 % interval "
            f"{both['ci'][0]:.2f} to {both['ci'][1]:.2f}, {both['n']} designs).** Brief seed 0 vs brief seed 1: "
            f"{one['rho']:.2f} ({one['ci'][0]:.2f} to {one['ci'][1]:.2f}).", "",
            f"Reading: the premise that the brief regime ranks designs as a longer one does {holds} here "
            "(taken as: the interval lies above 0.5 / below 0.5 / spans it).", "",
            "| design | brief (mean) | long (mean) | brief seeds |", "|---|---:|---:|---|"]
        lines += [f"| `{d.describe()}` | {b:.2f} | {g:.2f} | {s[0]:.1f}, {s[1]:.1f} |"
                  for d, b, g, s in sorted(rows, key=lambda r: -r[2])]
    else:
        lines.append("_Too few designs finished for a correlation yet._")
    print(run.finish(lines))


if __name__ == "__main__":
    main()
