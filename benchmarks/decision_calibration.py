"""Do the refiner's decisions mean what they say? Simulated against a known truth.

Two parts, both with the noise measured on SST-2 (seed-to-seed sd of one design 0.8 points; sd
between designs about 0.9):

1. Stages (``decision_calibration_stage.py``, run here with the refiner's settings): under the null
   the rate of any wrong "worse than the best" claim per stage (target <= 5 %); with one choice
   better by 1 seed-sd, how often it is kept (>= 95 %) and picked alone (>= 80 %).
2. Whole refinements in random additive worlds (each choice of each component has a true effect,
   plus a per-design deviation the effects do not explain, plus seed noise): correct final designs per
   100 trials for (a) the paper's procedure (k choices x N random designs per stage, compare means),
   (b) the procedure before this issue (designs per choice, replicated designs, compare means), and
   (c) this one (paired blocks, elimination, ties kept, greedy and joint final designs), at equal
   trial budgets: (a) and (b) get as many trials as (c) used in the same world. The new procedure
   runs through the real Refiner, pool (sequential) and store, with the synthetic scorer.

"Correct" = the final design's additive truth within ``--tolerance`` points of the best design's
(the per-design deviation is noise to every procedure).

    python benchmarks/decision_calibration.py --worlds 1000 --sims 1000
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from designspace import Design, DesignSpace, Experiment, TrialStore  # noqa: E402
from designspace.pool import SyntheticScorer  # noqa: E402
from designspace.refine import Refiner  # noqa: E402
from designspace.trial import TrialSpec  # noqa: E402

STRATEGY_SETS = [["lora"], ["adapter"], ["adapter", "lora"], ["bitfit", "prefix"]]
SPACE = {"tuned_groups": [[1, 2, 3, 4], [1, 2], [3, 4], [2, 3]],
         "strategies": {f"G{g}": STRATEGY_SETS for g in range(1, 5)}}


def key(c) -> str:
    return ",".join(map(str, c)) if isinstance(c, tuple) else str(c)


def world(rng: np.random.Generator, space: DesignSpace, a, salt: str) -> dict:
    """A random additive truth: every choice of every component gets an effect ~ N(0, effect_sd)."""
    effects = {}
    for comp in space.components():
        effects[comp] = {key(c): float(rng.normal(0, a.effect_sd)) for c in space.choices(comp)}
    # 6 layers in 4 groups: uniform and decreasing are one partition, so one truth.
    effects["grouping"]["decreasing"] = effects["grouping"]["uniform"]
    return {"effects": effects, "noise_sd": a.seed_sd, "design_sd": a.design_sd, "shared": a.shared,
            "salt": salt, "base": 80.0}


def additive(effects: dict, d: Design) -> float:
    value = effects["grouping"][d.grouping] + effects["allocation"][d.allocation]
    value += effects["tuned_groups"][key(d.tuned_groups)]
    return value + sum(effects[f"strategies.G{g}"][key(d.strategies[g - 1])] for g in d.tuned_groups)


def best_additive(effects: dict, space: DesignSpace) -> float:
    best_per = {c: max(effects[c][key(x)] for x in space.choices(c)) for c in space.components()}
    tuned = max(effects["tuned_groups"][key(t)] + sum(best_per[f"strategies.G{g}"] for g in t)
                for t in space.tuned_groups)
    return best_per["grouping"] + best_per["allocation"] + tuned


def score(scorer: SyntheticScorer, design: Design, seed: int) -> float:
    return scorer(TrialSpec(task="sst2", design=design, seed=seed)).score * 100


def compare_means(space: DesignSpace, scorer: SyntheticScorer, budget: int, replicated: int,
                  rng: random.Random) -> tuple[Design, int]:
    """The paper's procedure ((a): replicated=0) or the one before this issue ((b): 2 designs per stage
    also run with seed 1 and averaged in). Per stage, every choice on N designs drawn from the space
    with that choice (seed 0, one data order), N spreading the remaining ``budget`` over the remaining
    choices; the best mean wins the stage."""
    trials = 0
    comps = space.components()
    for i, comp in enumerate(comps):
        if comp.startswith("strategies.G") and not any(int(comp[-1]) in t for t in space.tuned_groups):
            space = space.restrict(comp, space.choices(comp)[0])
            continue
        left = sum(len(space.choices(c)) for c in comps[i:]
                   if not c.startswith("strategies.G") or any(int(c[-1]) in t for t in space.tuned_groups))
        per = max(1, round((budget - trials - replicated * (len(comps) - i)) / max(left, 1)))
        means = {}
        for choice in space.choices(comp):
            narrowed = space.restrict_many(comp, [choice])
            vals = []
            for j in range(per):
                d = narrowed.draw(rng)
                seeds = [0, 1] if j < replicated and choice == space.choices(comp)[0] else [0]
                vals.append(np.mean([score(scorer, d, s) for s in seeds]))
                trials += len(seeds)
            means[choice] = np.mean(vals)
        space = space.restrict_many(comp, [max(means, key=means.get)])
    return space.only_design(), trials


def paired(space_dict: dict, truth: dict, a, folder: Path, name: str) -> tuple[Design, Design, int]:
    """This issue's procedure through the real refiner; returns (greedy final, joint final, trials)."""
    base = {"name": name, "tasks": ["sst2"], "backend": "sequential", "blocks": a.blocks, "max_rounds": a.rounds,
            "margin": a.margin, "alpha": 0.05, "space": space_dict, "output": str(folder / name),
            "scorer": {"synthetic": {**truth, "n_layers": 6}}}
    out = []
    for decision in ("greedy", "joint"):
        exp = Experiment.from_dict({**base, "decision": decision})
        store = TrialStore(exp.store_path, durable=False)
        out.append(Refiner(exp, store=store, log=lambda m: None, progress=False).run())
    trials = len(TrialStore(Experiment.from_dict(base).store_path, readonly=True, create=False).records())
    return out[0], out[1], trials


def refinements(a) -> None:
    rng = np.random.default_rng(a.seed)
    space = DesignSpace.from_dict(SPACE)
    rows = {p: [] for p in ("a: paper", "b: before", "c: paired, greedy", "c: paired, joint")}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for w in range(a.worlds):
            truth = world(rng, space, a, salt=f"w{w}")
            scorer = SyntheticScorer(**truth)
            best = best_additive(truth["effects"], space)
            greedy, joint, t_c = paired(SPACE, truth, a, Path(tmp), f"w{w}")
            da, t_a = compare_means(space, scorer, t_c, 0, random.Random(w))
            db, t_b = compare_means(space, scorer, t_c, 2, random.Random(w))
            for name, d, t in (("a: paper", da, t_a), ("b: before", db, t_b), ("c: paired, greedy", greedy, t_c),
                               ("c: paired, joint", joint, t_c)):
                regret = best - additive(truth["effects"], d)
                rows[name].append((regret, t))
            if (w + 1) % max(1, a.worlds // 10) == 0:
                print(f"  {w + 1}/{a.worlds} worlds, {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    print(f"\n## Whole refinements: {a.worlds} random worlds, equal trial budgets per world\n")
    print(f"Space: 5 groupings (4 partitions on 6 layers) x 3 allocations x 4 tuned-group sets x 4 strategy sets "
          f"per group; effect sd {a.effect_sd}, design deviation sd {a.design_sd}, seed sd {a.seed_sd}, shared "
          f"{a.shared}; paired: {a.blocks} blocks per round, at most {a.rounds} rounds, margin {a.margin}.\n")
    print(f"| procedure | mean trials | correct (regret < {a.tolerance:.2f}) | mean regret | correct per 100 trials |")
    print("|---|---:|---:|---:|---:|")
    per100 = {}
    for name, vals in rows.items():
        regret = np.array([r for r, _ in vals])
        trials = np.array([t for _, t in vals])
        correct = float(np.mean(regret < a.tolerance))
        per100[name] = 100 * correct / trials.mean()
        print(f"| {name} | {trials.mean():.0f} | {correct:.1%} | {regret.mean():.2f} | {per100[name]:.3f} |")
    for new in ("c: paired, greedy", "c: paired, joint"):
        for old in ("a: paper", "b: before"):
            print(f"- {new} / {old}: {per100[new] / per100[old]:.2f}x correct final designs per 100 trials")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sims", type=int, default=1000, help="simulated stages per row of part 1")
    p.add_argument("--worlds", type=int, default=1000, help="simulated refinements of part 2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--margin", type=float, default=1.0)
    p.add_argument("--effect-sd", type=float, default=0.35, help="sd of the true effect of a choice (points)")
    p.add_argument("--design-sd", type=float, default=0.4, help="per-design deviation the effects miss")
    p.add_argument("--seed-sd", type=float, default=0.8)
    p.add_argument("--shared", type=float, default=0.3, help="share of the seed noise common to a block")
    p.add_argument("--tolerance", type=float, default=0.25, help="regret below which a final design is correct")
    p.add_argument("--skip-stages", action="store_true")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    print(f"# Decision calibration\n\nCommand: `{' '.join(shlex.quote(x) for x in sys.argv)}`; load average at start "
          f"{os.getloadavg()[0]:.2f}.\n")
    if not a.skip_stages:
        import decision_calibration_stage

        print("## Stages (decision_calibration_stage.py with the refiner's alpha and rounds)\n", flush=True)
        decision_calibration_stage.main(["--sims", str(a.sims), "--seed", str(a.seed), "--k", "3,4,15",
                                         "--rounds", str(a.rounds), "--pilot", str(a.blocks),
                                         "--delta", str(a.margin), "--noises", "iid,exchangeable"])
    refinements(a)
    print(f"\nWall time {time.perf_counter() - t0:.0f} s; load average at the end {os.getloadavg()[0]:.2f}.")


if __name__ == "__main__":
    main()
