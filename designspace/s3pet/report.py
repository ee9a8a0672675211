"""The tables of an S3PET experiment, from its store (no torch here).

``collect`` pairs every cell of the experiment (task, budget, seed, method) with its record;
``summarise`` turns them into plain numbers (``summary.json``); ``render`` writes them as
``README.md``; ``write_outputs`` does all three and writes each search's heat map
(``structures/<task>_b<budget>_s<seed>.heatmap.json``, what ``designspace plot`` draws) and plan.
Scores are the task's main dev metric in points (accuracy, F1 or Pearson x 100).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from ..compare import mean_sd, paired_difference, verdict
from .summary import mean_pairwise_jaccard, top_k

TOP_K = 10


def collect(store, searches: list[dict], retrain: list[dict]) -> list[dict]:
    """The cells with their records (``record`` None when not run yet or not runnable)."""
    keys = [c["spec"].key for c in searches + retrain if c["spec"] is not None]
    found = {r.key: r for r in store.records(keys)}
    return [{**c, "record": found.get(c["spec"].key) if c["spec"] is not None else None} for c in searches + retrain]


def _score(rec) -> float | None:
    return None if rec is None or not rec.ok else 100.0 * rec.score


def _scores(cells: list[dict]) -> dict[int, float]:
    return {c["seed"]: s for c in cells if (s := _score(c["record"])) is not None}


def _method_stats(cells: list[dict]) -> dict:
    scores = _scores(cells)
    mean, sd = mean_sd(list(scores.values()))
    params = [c["spec"].plan and sum(m["params"] for m in c["spec"].plan["modules"]) for c in cells if c["spec"]]
    status = "ok" if scores else ("does not fit" if all(c["spec"] is None for c in cells) else
                                  next((c["record"].status.value for c in cells if c["record"]), "not run"))
    return {"n": len(scores), "mean": mean, "sd": sd, "scores": scores, "max_params": max(params) if params else None,
            "status": status}


def _search_stats(search_cells: list[dict], retrain_s3pet: dict, candidates_n: int, pool_share: float) -> dict:
    from .summary import binary_entropy, decided_share

    done = [c for c in search_cells if c["record"] is not None and c["record"].status.value == "ok"]
    out: dict = {"n": len(done), "of": len(search_cells), "uniform_entropy": binary_entropy(pool_share)}
    if not done:
        return out
    results = [c["record"].result for c in done]
    chosen = [r["chosen"] for r in results]
    k = min(TOP_K, candidates_n)
    out["n_chosen"] = statistics.mean(len(x) for x in chosen)
    out["chosen_jaccard"] = mean_pairwise_jaccard(chosen)
    out["top_jaccard"] = mean_pairwise_jaccard([top_k(r["p"], k) for r in results])
    out["top_k"] = k
    searched = [r for r in results if r["steps"]["search"]]
    out["searched"] = len(searched)  # 0 when the whole pool fits: nothing to search
    if searched:
        traj = []
        for r in searched:
            h = [x for x in r["history"] if x["phase"] == "search"]
            traj.append([h[round(q * (len(h) - 1))]["entropy"] for q in (0, 0.25, 0.5, 0.75, 1)])
        out["entropy"] = [statistics.mean(t[i] for t in traj) for i in range(5)]
        out["decided_end"] = statistics.mean(
            decided_share(r["p"], [c["params"] for c in r["candidates"]], r["plan"]["budget_params"])
            for r in searched)
        out["p_chosen"] = statistics.mean(statistics.mean(r["p"][i] for i in r["chosen"]) for r in searched)
        out["p_rest_max"] = statistics.mean(max(x for i, x in enumerate(r["p"]) if i not in set(r["chosen"]))
                                            for r in searched)
        out["steps"] = searched[0]["steps"]
    mult = []
    for c in done:
        rec, re = c["record"], retrain_s3pet.get(c["seed"])
        if re is not None and re.ok and rec.result["steps"]["search"]:
            mult.append(rec.seconds_train / max(re.seconds_train + re.seconds_eval, 1e-9))
    out["search_seconds"] = statistics.mean(c["record"].seconds_train for c in done)
    if mult:
        out["cost_multiple"] = {"mean": statistics.mean(mult), "min": min(mult), "max": max(mult), "n": len(mult)}
    return out


def random_sets(cells: list[dict], candidates) -> list[list[int]]:
    from ..plan import Plan
    from .structure import plan_candidates

    return [plan_candidates(Plan.from_dict(c["spec"].plan), candidates) for c in cells if c["spec"] is not None]


def summarise(exp, budgets, cells: list[dict], candidates) -> dict:
    """Every number of the report, as plain JSON."""
    methods = ["s3pet", *exp.baselines]
    tasks = {}
    for task in exp.tasks:
        mine = [c for c in cells if c["task"] == task]
        anchors = {a: _method_stats([c for c in mine if c["method"] == a and c["budget"] is None])
                   for a in exp.anchors}
        rows = []
        for b in budgets:
            at = [c for c in mine if c["budget"] == b]
            stats = {m: _method_stats([c for c in at if c["method"] == m]) for m in methods}
            paired = {m: paired_difference(stats["s3pet"]["scores"], stats[m]["scores"]) for m in methods[1:]}
            re = {c["seed"]: c["record"] for c in at if c["method"] == "s3pet"}
            search = _search_stats([c for c in at if c["method"] == "s3pet search"], re, len(candidates), b.pool_share)
            search["random_jaccard"] = mean_pairwise_jaccard(random_sets([c for c in at if c["method"] == "random"],
                                                                          candidates))
            rows.append({"budget": {"params": b.params, "fraction": b.fraction, "pool_share": b.pool_share,
                                    "given": b.given},
                         "methods": stats, "paired": paired, "verdict": {m: verdict(d) for m, d in paired.items()},
                         "search": search})
        tasks[task] = {"anchors": anchors, "budgets": rows}
    mult = [r["search"]["cost_multiple"]["mean"] for t in tasks.values() for r in t["budgets"]
            if "cost_multiple" in r["search"]]
    return {"experiment": exp.name, "backbone": exp.backbone, "n_candidates": len(candidates),
            "pool_params": sum(c.params for c in candidates), "tasks": tasks,
            "cost_multiple": statistics.mean(mult) if mult else None}


def _ms(s: dict) -> str:
    if s["mean"] is None:
        return s["status"]
    sd = f" ± {s['sd']:.1f}" if s["sd"] is not None else ""
    return f"{s['mean']:.1f}{sd} (n={s['n']})"


def _diff(d: dict | None) -> str:
    if d is None:
        return ""
    ci = f" [{d['ci'][0]:+.1f}, {d['ci'][1]:+.1f}]" if d["ci"] else ""
    return f"{d['mean']:+.1f}{ci} ({d['wins']}/{d['n']} won)"


def render(exp, budgets, summary: dict, command: str, seconds: float) -> str:
    methods = ["s3pet", *exp.baselines]
    lines = [
        f"# S3PET on {exp.backbone}: searched vs random vs budget-matched manual structures",
        "",
        f"Run by `{command}` (experiment `{exp.source}`, store `{exp.store_path}`"
        + (f", {seconds / 60:.1f} min in the invocation that wrote this" if seconds else "")
        + "). Every number below is read from the store.",
        "",
        f"- Candidate pool: {summary['n_candidates']} candidates, {summary['pool_params']:,} parameters.",
        *[f"- Budget `{b.given}`: {b.describe()}." for b in budgets],
        f"- Retraining regime (every structure, every method): `{json.dumps(exp.regime.to_dict())}`; "
        "scored on the task's dev split; seeds pair methods (same training subset, batch order and initial weights).",
        f"- Search: `{json.dumps(exp.search.to_dict())}`.",
        "",
        "Scores: dev main metric x 100 (accuracy, F1 or Pearson), mean ± sd over seeds. `searched − X`: the "
        "mean per-seed difference of the searched structure and X, its 95 % t interval, and the seeds the "
        "searched one won. `shows`: whether that interval excludes 0 (a tie is a result). `params`: the "
        "largest structure over seeds.",
    ]
    for task, t in summary["tasks"].items():
        lines += ["", f"## {task}", ""]
        anchors = "; ".join(f"**{'head only' if a == 'head' else 'whole pool'}** {_ms(s)}"
                            + (f", {s['max_params']:,} params" if s["max_params"] else "")
                            for a, s in t["anchors"].items())
        if anchors:
            lines += [f"Anchors: {anchors}.", ""]
        lines += ["| budget | method | params | score | searched − method | shows |", "|---|---|---|---|---|---|"]
        for row in t["budgets"]:
            b = row["budget"]
            head = f"{b['params']:,} (1/{1 / b['pool_share']:.3g} of pool)"
            for m in methods:
                s = row["methods"][m]
                p = f"{s['max_params']:,}" if s["max_params"] is not None else ""
                d = row["paired"].get(m)
                lines.append(f"| {head} | {m} | {p} | {_ms(s)} | {_diff(d)} | "
                             f"{row['verdict'].get(m, '') if d else ''} |")
                head = ""
        lines += ["", "| budget | searches | entropy of p (bits/candidate) at 0, 25, 50, 75, 100 % of the search "
                      "(uniform p at the budget) | budget held by p ≥ 0.9 at end | mean p of chosen / largest p of "
                      "the rest | Jaccard of chosen sets across seeds (random's) | top-10 Jaccard | "
                      "search cost x one retraining |", "|---|---|---|---|---|---|---|---|"]
        for row in t["budgets"]:
            s = row["search"]
            ent = (" → ".join(f"{x:.3f}" for x in s["entropy"]) + f" ({s['uniform_entropy']:.3f})"
                   if s.get("entropy") else "nothing to search")
            pol = f"{s['decided_end']:.0%}" if "decided_end" in s else ""
            pc = f"{s['p_chosen']:.2f} / {s['p_rest_max']:.2f}" if "p_chosen" in s else ""
            jac = (f"{s['chosen_jaccard']:.2f} ({s['random_jaccard']:.2f})"
                   if s.get("chosen_jaccard") is not None and s.get("random_jaccard") is not None else "")
            top = f"{s['top_jaccard']:.2f}" if s.get("top_jaccard") is not None else ""
            cm = s.get("cost_multiple")
            cost = f"{cm['mean']:.1f} ({cm['min']:.1f}-{cm['max']:.1f})" if cm else ""
            lines.append(f"| {row['budget']['params']:,} | {s['n']}/{s['of']} | {ent} | {pol} | {pc} | {jac} | {top} | "
                         f"{cost} |")
    if summary["cost_multiple"] is not None:
        lines += ["", f"Search cost: {summary['cost_multiple']:.2f}x one retraining (train + dev evaluation of the "
                      "searched structure), mean over budgets and tasks."]
    return "\n".join(lines) + "\n"


def write_outputs(exp, budgets, candidates, cells: list[dict], command: str, seconds: float) -> dict:
    """``summary.json``, ``README.md`` and each finished search's heat map and plan under ``structures/``."""
    out = exp.out_dir
    folder = out / "structures"
    folder.mkdir(parents=True, exist_ok=True)
    for c in cells:
        rec = c["record"]
        if c["method"] == "s3pet search" and rec is not None and rec.status.value == "ok":
            stem = f"{c['task']}_b{c['budget'].params}_s{c['seed']}"
            _write(folder / f"{stem}.heatmap.json", rec.result["heatmap"])
            _write(folder / f"{stem}.plan.json", rec.result["plan"])
    summary = summarise(exp, budgets, cells, candidates)
    _write(out / "summary.json", summary)
    (out / "README.md").write_text(render(exp, budgets, summary, command, seconds))
    return summary


def _write(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=None if path.name.endswith("heatmap.json") else 1, default=str) + "\n")
