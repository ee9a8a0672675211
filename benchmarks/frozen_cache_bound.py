"""What a per-example cache of frozen layers would save on runs that happened (issue #15).

A design leaves every layer below its lowest PET module (its *cut*) frozen and identical for every
design: those layers' outputs for one example depend only on the example. A cache keyed by example
(task, split, example id, max length) that keeps the cut layer's input after the first visit would
skip those layers' forward pass on every later visit: the next epoch of the same trial, and every
later trial that sees the same example with a cut at or above a stored one.

This script does no training and measures no time: it replays a trial store in the order the trials
ran and counts the backbone's FLOPs (the formula of ``shared_pass.layer_flops``: forward below the
cut, forward and backward from it; evaluation forward through every layer; real token counts, no
padding) with and without such a cache, and the cache's size (the cut layer's input, length x width x
4 bytes, for every (example, cut) it stored). It is an upper bound on what the cache can save: one
cache shared by every worker, never evicted, and no cost to read it.

    python benchmarks/frozen_cache_bound.py results/paper_minilm/trials.sqlite results/final/trials.sqlite \\
        --out results/pack/frozen_cache_bound.md
"""

from __future__ import annotations

import argparse
import bisect
import functools
import os
import sys
import time
from pathlib import Path

from shared_pass import layer_flops

from designspace.backbones import backbone_info
from designspace.backbones.offline import resolve_backbone_path
from designspace.data import tokenise
from designspace.store import TrialStore
from designspace.train import spec_plan


def replay(records, backbone, tokenizer) -> dict:
    """FLOPs as run and with the cache, per trial in the order the trials started."""
    n_layers, width = len(backbone.layers), backbone.hidden_size
    fwd = functools.cache(lambda ln: layer_flops(backbone, ln, False))
    both = functools.cache(lambda ln: layer_flops(backbone, ln, True))
    stored: dict[tuple, list[int]] = {}  # example -> the cuts whose input the cache holds (sorted)
    out = {"trials": 0, "with_cut": 0, "run": 0.0, "saved": 0.0, "saved_epochs": 0.0, "bytes": 0, "cuts": {}}
    for r in sorted(records, key=lambda r: r.started_at or ""):
        spec = r.spec
        if spec.kind == "search":
            continue
        cut = 0 if spec.kind == "full" else min((m.layer for m in spec_plan(spec, backbone).modules), default=n_layers)
        out["trials"] += 1
        out["with_cut"] += cut > 0
        out["cuts"][cut] = out["cuts"].get(cut, 0) + 1
        reg = spec.regime
        train = tokenise(spec.task, "train", tokenizer, reg.max_length, reg.n_train, spec.data_seed,
                         spec.data_dir, False, spec.n_select)
        n_eval = reg.n_dev if spec.eval_split == "dev" else None
        evaluated = tokenise(spec.task, spec.eval_split, tokenizer, reg.max_length, n_eval, 0,
                             spec.data_dir, False, spec.n_select)
        visits = [(("train", e.idx), len(e.input_ids), reg.epochs) for e in train]
        visits += [((spec.eval_split, e.idx), len(e.input_ids), 1.0) for e in evaluated]
        for (split, idx), ln, times in visits:
            above = both(ln) if split == "train" else fwd(ln)
            out["run"] += times * (cut * fwd(ln) + (n_layers - cut) * above)
            if cut == 0:
                continue
            key = (spec.task, split, idx, reg.max_length, spec.n_select if split != "dev" else 0)
            cuts = stored.setdefault(key, [])
            held = cuts[bisect.bisect_right(cuts, cut) - 1] if cuts and cuts[0] <= cut else 0
            # the first visit of this trial starts from the highest stored input at or below its cut;
            # later visits (more epochs) start from its own cut, stored by the first
            out["saved"] += held * fwd(ln) + (times - 1) * cut * fwd(ln)
            out["saved_epochs"] += (times - 1) * cut * fwd(ln)
            if cut not in cuts:
                bisect.insort(cuts, cut)
                out["bytes"] += ln * width * 4
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stores", nargs="+", help="trial stores (trials.sqlite) to replay")
    p.add_argument("--out", help="write the report here (markdown) as well as printing it")
    a = p.parse_args(argv)
    start, load = time.perf_counter(), os.getloadavg()
    lines = ["# A per-example cache of frozen layers: what it would have saved", "",
             f"Command: `python benchmarks/frozen_cache_bound.py {' '.join(sys.argv[1:] if argv is None else argv)}`", "",
             "No training, no timing: each store is replayed in the order its trials started, counting the "
             "backbone's FLOPs (forward below a trial's cut, forward and backward from it, evaluation forward; "
             "real lengths) with and without a cache that keeps, per example, the cut layer's input for every cut "
             "it was seen with. Upper bound: one cache for all workers, never evicted, free to read.", "",
             "| store | trials | with a cut > 0 | cuts (layer: trials) | backbone GFLOPs as run | saved by the cache "
             "| of which across epochs of one trial | cache size |", "|---|---|---|---|---|---|---|---|"]
    for path in a.stores:
        store = TrialStore(path, create=False, readonly=True)
        records = [r for r in store.records(status="ok")]
        names = {r.spec.backbone for r in records}
        for name in sorted(names):
            backbone = backbone_info(name)
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(resolve_backbone_path(name))
            o = replay([r for r in records if r.spec.backbone == name], backbone, tokenizer)
            cuts = ", ".join(f"{c}: {n}" for c, n in sorted(o["cuts"].items()))
            lines.append(f"| `{Path(path).parent.name}` ({name}) | {o['trials']} | {o['with_cut']} | {cuts} | "
                         f"{o['run'] / 1e9:,.0f} | {o['saved'] / o['run']:.1%} | {o['saved_epochs'] / o['run']:.1%} | "
                         f"{o['bytes'] / 2**20:,.0f} MiB |")
    lines += ["", f"Cost: {time.perf_counter() - start:.0f} s of one core (replaying only; no training); "
              f"load average (1, 5, 15 min) at the start {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f} on "
              f"{os.cpu_count()} cores (a FLOP count: the load does not change it)."]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
