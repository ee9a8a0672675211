"""``designspace search EXPERIMENT.yaml``: searches, retrainings and baselines, written as they finish.

The file names ``backbone``, ``tasks``, ``budgets`` (fractions), ``seeds``, ``regime`` (the brief
training of every structure, and the search's n_train / max_length / batch_size), ``search``
(other :class:`SearchConfig` fields), ``baselines`` (``random`` and manual kinds), ``output``;
optionally ``data_dir``, ``baseline_seeds`` and ``threads``. A task may be ``{task: rte, regime:
{...}}`` and a budget ``{budget: 0.01, sizes: {lora: 8}}``. Every finished retraining is a row of
``runs.csv``; ``summary.csv`` and ``README.md`` are rewritten after each, so a partial run still
leaves a table, and a rerun skips rows that are already there.
"""

from __future__ import annotations

import csv
import shlex
import statistics
import sys
import time
from pathlib import Path

from ..errors import DesignSpaceError, invalid
from ..plan import Plan
from ..space import load_yaml
from ..train import Regime, train_design
from .search import SearchConfig, search
from .structure import manual_structure, plot_heatmap, random_structure

KEYS = {"backbone", "tasks", "budgets", "seeds", "regime", "search", "baselines", "baseline_seeds", "output",
        "data_dir", "threads"}
MANUAL = ("lora", "bitfit", "adapter", "lnfit")
NOTHING = "nothing to search"
FIELDS = ["task", "budget", "seed", "method", "status", "score", "params", "budget_params", "within_budget",
          "search_seconds", "train_seconds", "eval_seconds", "cost_multiple", "note"]


def _entries(items, key: str, source: str) -> list[tuple]:
    out = []
    for it in items:
        if isinstance(it, dict):
            if key not in it:
                raise invalid(f"{key}s", it, f"a {key} or {{{key}: ..., ...}}", source)
            out.append((it[key], {k: v for k, v in it.items() if k != key}))
        else:
            out.append((it, {}))
    return out


def load_search_experiment(path: str | Path) -> dict:
    """The experiment file, validated (an error names the file, field and value)."""
    src = str(path)
    d = load_yaml(path)
    for k in d:
        if k not in KEYS:
            raise invalid(k, d[k], "fields " + ", ".join(sorted(KEYS)), src)
    for k in ("backbone", "tasks", "budgets", "seeds", "output"):
        if k not in d:
            raise DesignSpaceError(f"{src}: missing field {k!r}")
    baselines = d.get("baselines", ["random", *MANUAL])
    for b in baselines:
        if b not in ("random", *MANUAL):
            raise invalid("baselines", b, ["random", *MANUAL], src)
    exp = {**d, "baselines": baselines, "tasks": _entries(d["tasks"], "task", src),
           "budgets": _entries(d["budgets"], "budget", src), "search": dict(d.get("search") or {})}
    exp["baseline_seeds"] = list(d.get("baseline_seeds", d["seeds"]))
    # Validate every combination now rather than an hour into the run.
    for task, over in exp["tasks"]:
        regime = Regime.from_dict({**(d.get("regime") or {}), **(over.get("regime") or {})})
        for budget, bover in exp["budgets"]:
            try:
                _search_config(exp, task, regime, budget, bover, 0)
            except DesignSpaceError as e:
                raise DesignSpaceError(f"{src}: {e}") from None
    return exp


def _search_config(exp: dict, task: str, regime: Regime, budget: float, bover: dict, seed: int) -> SearchConfig:
    return SearchConfig.from_dict({
        **exp["search"], **bover, "task": task, "budget": budget, "seed": seed, "n_train": regime.n_train,
        "max_length": regime.max_length, "batch_size": regime.batch_size,
    })


def run_search_experiment(path: str | Path) -> dict:
    """Run the experiment file at ``path``; returns {rows, summary, output, seconds, cost_multiple}."""
    import torch

    from ..backbones import load_backbone

    exp = load_search_experiment(path)
    started = time.perf_counter()
    command = " ".join(shlex.quote(a) for a in sys.argv) or f"run_search_experiment({str(path)!r})"
    if exp.get("threads"):
        torch.set_num_threads(int(exp["threads"]))
    out = Path(exp["output"])
    (out / "structures").mkdir(parents=True, exist_ok=True)
    runs_path = out / "runs.csv"
    rows = read_rows(runs_path)
    done = {(r["task"], r["budget"], r["seed"], r["method"]) for r in rows}
    backbone = load_backbone(exp["backbone"])
    data_dir = exp.get("data_dir")

    def record(row: dict) -> None:
        rows.append({k: row.get(k, "") for k in FIELDS})
        write_rows(runs_path, rows)
        minutes = (time.perf_counter() - started) / 60
        write_tables(out, rows, ["s3pet", *exp["baselines"]], [
            "# S3PET structure search vs random and manual structures", "",
            f"Command: `{command}` (experiment `{path}`); {minutes:.1f} min wall time so far.",
        ])

    for task, tover in exp["tasks"]:
        regime = Regime.from_dict({**(exp.get("regime") or {}), **(tover.get("regime") or {})})
        for budget, bover in exp["budgets"]:
            for seed in exp["seeds"]:
                key = (task, str(budget), str(seed))
                stem = f"{task}_b{budget}_s{seed}"
                config = _search_config(exp, task, regime, budget, bover, seed)
                trained: dict[tuple, dict] = {}  # identical structures train identically: train once
                ctx = (task, regime, budget, seed, stem, trained)

                if (*key, "s3pet") not in done:
                    res = search(backbone, config, data_dir=data_dir)
                    res.save(out / "structures", stem)
                    if seed == exp["seeds"][0]:
                        plot_heatmap(res.heatmap(), out / "structures" / f"{stem}.heatmap.png")
                    row = _retrain_row(backbone, res.plan, "s3pet", {"search_seconds": round(res.seconds, 2)}, ctx, out, data_dir)
                    retraining = row["train_seconds"] + row["eval_seconds"]
                    row["cost_multiple"] = round(res.seconds / retraining, 3) if retraining and res.steps else ""
                    if not res.steps:
                        row["note"] = f"the whole space fits the budget: {NOTHING}"
                    record(row)
                    print(f"{stem}: s3pet {row['score']} ({row['params']:,}/{row['budget_params']:,} params); "
                          f"search {res.seconds:.0f}s = {row['cost_multiple']}x one retraining", flush=True)
                else:
                    prior = next(r for r in rows if (r["task"], r["budget"], r["seed"], r["method"]) == (*key, "s3pet"))
                    trained[Plan.load(out / "structures" / f"{stem}.plan.json").modules] = {**prior}
                for method in exp["baselines"]:
                    if (*key, method) in done or (method != "random" and seed not in exp["baseline_seeds"]):
                        continue
                    if method == "random":
                        plan = random_structure(backbone, budget, seed, config.space, config.sizes, config.options)
                    else:
                        plan = manual_structure(backbone, method, budget, config.space, config.options)
                    if plan is None:
                        record({"task": task, "budget": budget, "seed": seed, "method": method, "status": "does not fit",
                                "budget_params": int(budget * backbone.n_params)})
                        continue
                    row = _retrain_row(backbone, plan, method, {}, ctx, out, data_dir)
                    record(row)
                    print(f"{stem}: {method} {row['score']} ({row['params']:,} params)", flush=True)
    summary = _summary(rows)
    multiples = cost_multiples(rows)
    mean_multiple = statistics.mean(multiples) if multiples else None
    if mean_multiple is not None:
        print(f"search cost: {mean_multiple:.2f}x one retraining (mean over {len(multiples)} searches)")
    return {"rows": rows, "summary": summary, "output": str(out), "seconds": time.perf_counter() - started,
            "cost_multiple": mean_multiple}


def _retrain_row(backbone, plan, method: str, extra: dict, ctx: tuple, out: Path, data_dir) -> dict:
    """Retrain ``plan`` (or reuse the row of an identical structure: same seed, same result)."""
    task, regime, budget, seed, stem, trained = ctx
    plan.save(out / "structures" / f"{stem}.{method}.plan.json")
    if plan.modules in trained:
        prior = trained[plan.modules]
        return {**prior, **extra, "method": method, "note": f"same structure as {prior['method']}"}
    r = train_design(plan, backbone, task, regime, seed=seed, data_dir=data_dir)
    row = {"task": task, "budget": budget, "seed": seed, "method": method, "status": r.status, "score": r.score,
           "params": plan.params, "budget_params": plan.budget_params,
           "within_budget": int(plan.params <= plan.budget_params), "train_seconds": round(r.seconds_train, 2),
           "eval_seconds": round(r.seconds_eval, 2), "note": r.error or "", **extra}
    trained[plan.modules] = row
    return row


def cost_multiples(rows: list[dict]) -> list[float]:
    """Search seconds / retraining seconds of every search that had something to search."""
    return [m for r in rows if r["method"] == "s3pet" and NOTHING not in str(r.get("note"))
            and (m := _num(r.get("cost_multiple"))) is not None]


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def write_rows(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)


def _num(v) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _summary(rows: list[dict]) -> list[dict]:
    """One row per (task, budget, method): mean, sd and n of the score; max params; mean cost multiple."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((str(r["task"]), float(r["budget"]), str(r["method"])), []).append(r)
    out = []
    for (task, budget, method), rs in groups.items():
        scores = [s for s in (_num(r["score"]) for r in rs) if s is not None]
        params = [int(_num(r["params"])) for r in rs if _num(r["params"]) is not None]
        # A search with nothing to search (the whole space fits) costs nothing; it says nothing of the cost.
        mult = [m for m in (_num(r.get("cost_multiple")) for r in rs if NOTHING not in str(r.get("note")))
                if m is not None]
        out.append({
            "task": task, "budget": budget, "method": method, "n": len(scores),
            "mean": round(statistics.mean(scores), 4) if scores else None,
            "sd": round(statistics.stdev(scores), 4) if len(scores) > 1 else None,
            "max_params": max(params) if params else None, "budget_params": int(_num(rs[0]["budget_params"]) or 0),
            "within_budget": all(p <= int(_num(rs[0]["budget_params"])) for p in params) if params else None,
            "cost_multiple": round(statistics.mean(mult), 3) if mult else None,
            "status": "ok" if scores else rs[0]["status"],
        })
    return out


def _cell(s: dict | None) -> str:
    if s is None:
        return ""
    if s["mean"] is None:
        return s["status"]
    sd = f" ± {s['sd']:.3f}" if s["sd"] is not None else ""
    return f"{s['mean']:.3f}{sd} (n={s['n']})"


def _paired(rows: list[dict], task: str, budget: float) -> str:
    """Mean s3pet - random over seeds that have both, and how many seeds s3pet won."""
    by = {}
    for r in rows:
        if r["task"] == task and float(r["budget"]) == budget and _num(r["score"]) is not None:
            by.setdefault(str(r["seed"]), {})[r["method"]] = float(r["score"])
    diffs = [v["s3pet"] - v["random"] for v in by.values() if "s3pet" in v and "random" in v]
    if not diffs:
        return ""
    return f"{statistics.mean(diffs):+.3f} ({sum(d > 0 for d in diffs)}/{len(diffs)} won)"


def write_tables(out: Path, rows: list[dict], methods: list[str], preamble: list[str]) -> None:
    """``summary.csv`` and ``README.md`` (``preamble``, then one line per task and budget) in ``out``."""
    summary = _summary(rows)
    if not summary:
        return
    with open(out / "summary.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(summary[0]))
        w.writeheader()
        w.writerows(summary)
    cell = {(s["task"], s["budget"], s["method"]): s for s in summary}
    head = ["task", "budget (params)", "s3pet params (max)", *methods, "s3pet − random", "search cost ×"]
    lines = [
        *preamble,
        "",
        "Scores: dev main metric (SST-2, RTE: accuracy; MRPC: F1) of the retrained structure, mean ± sd over "
        "seeds (n = seeds). `s3pet − random`: mean paired difference over seeds, and how many seeds S3PET won. "
        "`search cost ×` = search seconds / seconds of one retraining (train + dev evaluation) of the searched "
        "structure. `s3pet params (max)`: the largest searched structure over seeds (OVER would mark a "
        "structure above the budget; `runs.csv` checks every row in `within_budget`).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    seen = []
    for s in summary:
        if (s["task"], s["budget"]) not in seen:
            seen.append((s["task"], s["budget"]))
    for task, budget in seen:
        s3 = cell.get((task, budget, "s3pet"))
        used = f"{s3['max_params']:,}" + ("" if s3["within_budget"] else " OVER") if s3 and s3["max_params"] else ""
        bp = (s3 or next(v for k, v in cell.items() if k[:2] == (task, budget)))["budget_params"]
        mult = f"{s3['cost_multiple']:.2f}" if s3 and s3["cost_multiple"] is not None else ""
        lines.append("| " + " | ".join([task, f"{budget:.2%} ({bp:,})", used,
                                        *[_cell(cell.get((task, budget, m))) for m in methods],
                                        _paired(rows, task, budget), mult]) + " |")
    (out / "README.md").write_text("\n".join(lines) + "\n")
