"""Does a pack train faster than its designs one by one on this CPU? Training only (16 dev examples), and
the memory cost that decides it: minor page faults of fresh large tensors (issue #15).

K designs of the paper's space (seeds 0..K-1) on MiniLM-L6, SST-2, ``--n-train`` examples x 1 epoch, one
torch thread: (a) ``run_spec`` on each design in turn, (b) ``run_pack`` on all K; two repetitions,
alternating. With ``--mallopt`` glibc is told never to return large blocks to the OS or to mmap them
(``mallopt(M_MMAP_THRESHOLD, 1 GiB)``, ``mallopt(M_TRIM_THRESHOLD, 2 GiB)``), so freed activations are
reused without page faults. Prints CPU seconds, minor page faults and the final losses of every run
(they must be equal) and the load average before and after; ``--out`` also writes them as markdown.

    python benchmarks/pack_vs_alone_cpu.py --out results/pack/pack_vs_alone_cpu.md
    python benchmarks/pack_vs_alone_cpu.py --mallopt --out results/pack/pack_vs_alone_cpu_mallopt.md
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import sys
import time
from pathlib import Path

import torch

from designspace import DesignSpace
from designspace.backbones import load_backbone
from designspace.regime import Regime
from designspace.train import run_spec
from designspace.train_pack import run_pack
from designspace.trial import TrialSpec


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--n-train", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--mallopt", action="store_true", help="keep freed large blocks in the heap (glibc only)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if args.mallopt:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, (1 << 31) - 1)  # M_TRIM_THRESHOLD
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    backbone = load_backbone("minilm-l6", device="cpu")
    regime = Regime(n_train=args.n_train, n_dev=16, threads=1)
    specs = [TrialSpec("sst2", d, seed=i, regime=regime, backbone="minilm-l6")
             for i, d in enumerate(DesignSpace().sample(args.k, seed=0))]
    run_pack(specs[:1], backbone)  # warm-up: data, tokenizer, first allocations
    rows = []
    for rep in range(args.reps):
        for mode in ("alone", "pack") if rep % 2 == 0 else ("pack", "alone"):
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            cpu = time.process_time()
            records = [run_spec(s, backbone) for s in specs] if mode == "alone" else run_pack(specs, backbone)
            cpu = time.process_time() - cpu
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
            losses = " ".join(f"{r.final_loss:.6f}" for r in records)
            rows.append((rep, mode, cpu, faults, losses))
            print(f"rep {rep} {mode}: {cpu:.1f} CPU s, {faults:,} minor faults, losses {losses}", flush=True)
    load_after = os.getloadavg()
    lines = [
        "# A pack against its designs one by one, training only, on this CPU",
        "",
        f"Command: `python benchmarks/pack_vs_alone_cpu.py{' --mallopt' if args.mallopt else ''}"
        f"{'' if args.out is None else ' --out ' + str(args.out)}`",
        "",
        f"MiniLM-L6, SST-2, {args.n_train} training examples x 1 epoch, 16 dev examples, K = {args.k} designs of the "
        f"paper's space (seeds 0..{args.k - 1}), 1 torch thread, glibc mallopt {'on' if args.mallopt else 'off'}. "
        f"Load average (1, 5, 15 min) before: {', '.join(f'{x:.2f}' for x in load_before)}; after: "
        f"{', '.join(f'{x:.2f}' for x in load_after)} on {os.cpu_count()} cores.",
        "",
        "| rep | mode | CPU s | minor page faults | final losses |",
        "| --- | --- | --- | --- | --- |",
        *(f"| {r} | {m} | {c:.1f} | {f:,} | {x} |" for r, m, c, f, x in rows),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
