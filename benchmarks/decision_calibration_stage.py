"""Calibration of the paired-stage decision rule (designspace.decision) against a known truth.

    python benchmarks/decision_calibration_stage.py                 # 1000 stages per row
    python benchmarks/decision_calibration_stage.py --sims 200      # a quick look

Each simulated stage runs the rule that real stages run (``look_batch``, the core of ``decide``)
with "auto" sizing: a pilot round, then after every look the stage's total is set by
``blocks_needed`` (half-width ``--resolution``, by default delta / 2 so that equal choices can end
in a tie) from the paired noise measured so far, and spread over the remaining rounds.
Scores follow the measurements on real data: seed-to-seed sd 0.8 points, between-design sd 0.9
points, split into a block (base design) effect and a choice-by-base interaction. Two variants
correlate the errors inside a block (same variance per cell): "exchangeable" (every pair alike, e.g.
a shared data order), which the block effect absorbs exactly, and "ar1" (neighbouring choices more
alike than distant ones), which the iid two-way model does not know about: neighbours' differences
are less noisy than the pooled estimate says, distant choices' more.

Targets: under the null a wrong "worse than the best" claim in <= 5 % of stages; with one choice
better by one seed sd, that choice kept in >= 95 % and picked alone in >= 80 %.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

from designspace.decision import blocks_needed, look_batch


def simulate(k: int, truth: np.ndarray, noise: str, a: argparse.Namespace, rng: np.random.Generator,
             method: str) -> dict:
    """Run ``a.sims`` stages of ``k`` choices with true effects ``truth``; return the outcome rates."""
    n, cap = a.sims, a.max_blocks
    inter_sd = a.interaction_sd
    block_sd = math.sqrt(max(a.between_sd**2 - inter_sd**2, 0.0))
    resid_sd = math.sqrt(a.seed_sd**2 + inter_sd**2)
    e = rng.standard_normal((n, cap, k))
    if noise != "iid":
        lag = np.abs(np.subtract.outer(np.arange(k), np.arange(k)))
        corr = a.rho**lag if noise == "ar1" else np.where(lag == 0, 1.0, a.rho)
        e = e @ np.linalg.cholesky(corr).T
    y = truth[None, None, :] + block_sd * rng.standard_normal((n, cap, 1)) + resid_sd * e
    del e
    top = truth.max()
    cobest = truth >= top - 1e-12
    active = np.ones((n, k), bool)
    blocks = np.full(n, a.pilot)
    trials = blocks * k
    status = np.full(n, "open", dtype=object)
    rounds = np.zeros(n, int)
    wrong = np.zeros(n, bool)
    best_kept = np.ones(n, bool)
    theta = np.array([truth[j] - np.delete(truth, j).max() for j in range(k)])  # tau_j - best of the others
    live = np.arange(n)
    for r in range(1, a.rounds + 1):
        obs = np.arange(cap)[None, :] < blocks[live, None]
        tab = np.where(obs[:, :, None], y[live], np.nan)
        lk = look_batch(tab, active[live], level=1 - a.alpha / a.rounds, delta=a.delta, method=method)
        rounds[live] = r
        wrong[live] |= (lk.worse & cobest[None, :]).any(1)
        best_kept[live] &= ~lk.worse[:, int(np.argmax(truth))]
        # A tie is wrong when some survivor is really >= delta below the best of the others.
        wrong[live] |= (lk.status == "tie") & (lk.survivors & (theta[None, :] <= -a.delta)).any(1)
        active[live] = lk.survivors
        status[live] = lk.status
        still = lk.status == "open"
        if r == a.rounds:
            break
        idx = live[still]
        for i, s, ks in zip(idx, lk.resid_sd[still], lk.survivors[still].sum(1), strict=True):
            total = blocks_needed(s, a.resolution, int(ks), a.alpha, a.rounds, method, max_blocks=10**6)
            step = max(a.pilot, math.ceil((total - blocks[i]) / (a.rounds - r)))
            new = min(cap, blocks[i] + step) - blocks[i]
            blocks[i] += new
            trials[i] += new * ks
        live = idx
        if live.size == 0:
            break
    best = int(np.argmax(truth))
    alone = (status == "separated") & active[:, best]
    # A "separated" claim is wrong when the one choice left is not a truly best one.
    sep_wrong = (status == "separated") & ~(active & cobest[None, :]).any(1)
    return {
        "wrong": wrong.mean(), "sep_wrong": sep_wrong.mean(), "kept": best_kept.mean(), "alone": alone.mean(),
        "tie": (status == "tie").mean(), "unresolved": (status == "open").mean(),
        "rounds": rounds.mean(), "blocks": blocks.mean(), "trials": trials.mean(),
        "capped": (blocks >= cap).mean(),
    }


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson's 95 % interval of a rate ``p`` seen in ``n`` simulated stages."""
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sims", type=int, default=1000, help="stages per row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", default="3,5,15", help="numbers of choices")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--rounds", type=int, default=4, help="planned looks (the cap)")
    p.add_argument("--pilot", type=int, default=5, help="blocks in round 1, and the least a round adds")
    p.add_argument("--delta", type=float, default=0.5, help="equivalence margin (points)")
    p.add_argument("--resolution", type=float, default=None, help="target half-width; default delta / 2")
    p.add_argument("--max-blocks", type=int, default=500)
    p.add_argument("--seed-sd", type=float, default=0.8)
    p.add_argument("--between-sd", type=float, default=0.9)
    p.add_argument("--interaction-sd", type=float, default=0.4)
    p.add_argument("--effect", type=float, default=0.8, help="lead of the better choice (points)")
    p.add_argument("--noises", default="iid,exchangeable,ar1", help="within-block error models")
    p.add_argument("--rho", type=float, default=0.5, help="correlation of the correlated variants")
    p.add_argument("--method", default="strict", choices=("strict", "hsu"))
    a = p.parse_args(argv)
    a.resolution = a.resolution or a.delta / 2
    unknown = set(a.noises.split(",")) - {"iid", "exchangeable", "ar1"}
    if unknown:
        p.error(f"--noises: unknown {sorted(unknown)}; allowed: iid, exchangeable, ar1")
    if a.resolution <= 0:
        p.error("--resolution (or --delta) must be > 0")
    t0, load0 = time.perf_counter(), os.getloadavg()
    rng = np.random.default_rng(a.seed)
    print(f"command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
    print(f"paired noise sd {math.hypot(a.seed_sd, a.interaction_sd):.3f} (seed {a.seed_sd}, interaction "
          f"{a.interaction_sd}); alpha {a.alpha} over {a.rounds} looks; delta {a.delta}; resolution "
          f"{a.resolution}; pilot {a.pilot} blocks; cap {a.max_blocks} blocks; method {a.method}")
    head = (f"{'noise':<12} {'k':>3} {'truth':<10} {'wrong%':>7} {'(95% CI)':>13} {'sepwrong%':>9} {'kept%':>6} "
            f"{'alone%':>7} {'tie%':>5} "
            f"{'unres%':>7} {'rounds':>6} {'blocks':>7} {'trials':>7} {'capped%':>7}")
    print(head)
    print("-" * len(head))
    for noise in a.noises.split(","):
        for k in (int(x) for x in a.k.split(",")):
            for name in ("null", "one-better"):
                truth = np.zeros(k)
                if name == "one-better":
                    truth[0] = a.effect
                r = simulate(k, truth, noise, a, rng, a.method)
                kept, alone = (f"{100 * r['kept']:>6.1f}", f"{100 * r['alone']:>7.1f}") if name != "null" \
                    else (f"{'-':>6}", f"{'-':>7}")
                lo, hi = wilson(r["wrong"], a.sims)
                print(f"{noise:<12} {k:>3} {name:<10} {100 * r['wrong']:>7.1f} {f'{100 * lo:.1f}-{100 * hi:.1f}':>13} "
                      f"{100 * r['sep_wrong']:>9.1f} {kept} {alone} "
                      f"{100 * r['tie']:>5.1f} {100 * r['unresolved']:>7.1f} {r['rounds']:>6.2f} "
                      f"{r['blocks']:>7.1f} {r['trials']:>7.0f} {100 * r['capped']:>7.1f}", flush=True)
    print(f"targets: wrong <= {100 * a.alpha:.0f} % (null: any elimination; one-better: the best eliminated "
          f"or a tie); sepwrong: a 'separated' claim whose winner is not a truly best choice; one-better kept "
          f">= 95 %, alone >= 80 %; the 95 % interval of each rate is Wilson's over the simulated stages")
    print(f"load average before {load0}, after {os.getloadavg()}; wall {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
