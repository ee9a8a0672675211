"""Fault drills on a small real refinement (and an S3PET run): what a user's kills, races and edits do.

1. Kill the driver (SIGKILL and SIGTERM, alternating) at random points, resume, and compare with an
   uninterrupted run: the same records (key and score) and the same stage plans and decisions; no
   worker process alive 10 s after a kill.
2. Two drivers started together on one store: one runs, the other is refused in one line.
3. An edited experiment file under an existing store: refused in one line, nothing trained.

    python benchmarks/faults.py --kills 4            # about 10 minutes on 2 cores
    python benchmarks/faults.py --what s3pet --kills 3

Everything runs through the `designspace` command, as a user would run it.
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "designspace.cli"]

REFINE = {
    "name": "faults", "backbone": "minilm-l6", "tasks": ["sst2"], "budget": 0.005,
    "regime": {"n_train": 160, "max_length": 48, "batch_size": 16}, "selection": 200,
    "space": {"tuned_groups": [[1, 2, 3, 4], [3, 4]], "strategies": {g: [["lora"], ["adapter"]] for g in
                                                                       ("G1", "G2", "G3", "G4")}},
    "stages": ["grouping", "allocation", "tuned_groups"], "blocks": 3, "max_rounds": 2, "margin": 3.0,
    "n_jobs": 2,
}


#: A small S3PET run: 2 seeds, 1 budget, short searches and retrainings (minutes on 2 cores).
S3PET = {
    "backbone": "minilm-l6", "tasks": ["sst2"], "budgets": [1.39e-4], "seeds": [0, 1],
    "regime": {"n_train": 200, "epochs": 1, "batch_size": 16, "max_length": 48},
    "search": {"n_train": 400, "warmup_epochs": 1, "epochs": 1, "lr_gates": 0.1},
    "baselines": ["random", "lnfit"], "anchors": ["head"], "n_jobs": 2, "threads": 1,
}


def descendants(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
    children: dict[int, list[int]] = {}
    for line in out.splitlines():
        p, pp = (int(x) for x in line.split())
        children.setdefault(pp, []).append(p)
    found, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            found.append(c)
            todo.append(c)
    return found


def alive(pids: list[int]) -> list[int]:
    left = []
    for p in pids:
        try:
            if Path(f"/proc/{p}/stat").read_text().split()[2] != "Z":
                left.append(p)
        except (FileNotFoundError, ProcessLookupError):
            pass
    return left


def cli(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=ROOT, **kw)


def snapshot(store: Path) -> tuple[dict, list]:
    from designspace import TrialStore
    from designspace.refine import load_states

    with TrialStore(store, create=False, readonly=True) as s:
        records = {r.key: (str(r.status), r.score, str(r.result.get("chosen"))) for r in s.records()}
        states = [st.to_dict() for st in load_states(s)]
    return records, states


def write(folder: Path, name: str, data: dict) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**data, "name": name, "output": str(folder / name)}))
    return path


def kills(folder: Path, base: dict, n: int, rng: random.Random, command: str) -> list[str]:
    lines = []
    reference = write(folder, "reference", base)
    t0 = time.perf_counter()
    done = cli(command, str(reference))
    assert done.returncode == 0, done.stderr[-2000:]
    whole = time.perf_counter() - t0
    lines.append(f"uninterrupted run: {whole:.0f} s")
    killed = write(folder, "killed", base)
    total = len(snapshot(folder / "reference" / "trials.sqlite")[0])
    store = folder / "killed" / "trials.sqlite"
    for i in range(n):
        how = signal.SIGKILL if i % 2 == 0 else signal.SIGTERM
        have = len(snapshot(store)[0]) if store.exists() else 0
        # Kill after a random number of new trials: spread over what is left, so every kill lands mid-run.
        target = have + rng.randint(1, max(1, (total - have) // (n - i + 1)))
        proc = subprocess.Popen([*CLI, command, str(killed)], cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        t0 = time.monotonic()
        while proc.poll() is None and (not store.exists() or len(snapshot(store)[0]) < target):
            time.sleep(0.2)
        family = descendants(proc.pid)
        at = time.monotonic() - t0
        proc.send_signal(how)
        proc.wait(timeout=60)
        # What the command said last (the interpreter's own shutdown warnings come after it).
        err = [x for x in proc.stderr.read().strip().splitlines() if x.startswith("designspace:")] or ["-"]
        t = time.monotonic()
        while alive(family) and time.monotonic() - t < 10:
            time.sleep(0.2)
        left = alive(family)
        lines.append(f"kill {i + 1}: {how.name} after {at:.0f} s, {len(snapshot(store)[0])}/{total} trials recorded; "
                     f"{len(family)} worker process(es); alive 10 s later: {len(left)}; exit {proc.returncode}; "
                     f"last line: {err[-1][:110] if err else '-'}")
        for p in left:
            os.kill(p, signal.SIGKILL)
        proc.stderr.close()
    done = cli(command, str(killed))
    assert done.returncode == 0, done.stderr[-2000:]
    a = snapshot(folder / "reference" / "trials.sqlite")
    b = snapshot(folder / "killed" / "trials.sqlite")
    lines.append(f"records: {len(a[0])} uninterrupted, {len(b[0])} killed and resumed; identical: {a[0] == b[0]}")
    lines.append(f"stage plans and decisions identical: {a[1] == b[1]}")
    return lines


def two_drivers(folder: Path, base: dict) -> list[str]:
    path = write(folder, "race", base)
    procs = [subprocess.Popen([*CLI, "refine", str(path)], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    codes = [p.wait(timeout=3600) for p in procs]
    errs = [p.stderr.read().strip().splitlines() for p in procs]
    refused = [e[-1] for c, e in zip(codes, errs, strict=True) if c != 0]
    same = snapshot(folder / "race" / "trials.sqlite")[0] == snapshot(folder / "reference" / "trials.sqlite")[0]
    return [f"two drivers: exit codes {codes}; the refused one said: {refused[0][:160] if refused else '-'}",
            f"the store the other one wrote equals the uninterrupted run's: {same}"]


def edited(folder: Path, base: dict) -> list[str]:
    path = write(folder, "reference", {**base, "budget": 0.01})
    before = snapshot(folder / "reference" / "trials.sqlite")
    done = cli("refine", str(path))
    after = snapshot(folder / "reference" / "trials.sqlite")
    return [f"edited budget under the existing store: exit {done.returncode}; "
            f"{done.stderr.strip().splitlines()[-1][:200]}", f"store unchanged: {before == after}"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--what", default="refine", choices=("refine", "s3pet"))
    p.add_argument("--keep", help="folder for the runs (default: a temporary one)")
    a = p.parse_args(argv)
    rng = random.Random(a.seed)
    print(f"# Fault drills\n\nCommand: `{' '.join(shlex.quote(x) for x in sys.argv)}`; load average "
          f"{os.getloadavg()[0]:.2f}.\n")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(a.keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        if a.what == "refine":
            lines = kills(folder, REFINE, a.kills, rng, "refine")
            lines += two_drivers(folder, REFINE)
            lines += edited(folder, REFINE)
        else:
            lines = kills(folder, S3PET, a.kills, rng, "search")
        for line in lines:
            print(f"- {line}")
    print(f"\nLoad average at the end {os.getloadavg()[0]:.2f}.")


if __name__ == "__main__":
    main()
