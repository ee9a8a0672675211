"""Figure data of a refinement, from a store filled with synthetic trials and decisions."""

from __future__ import annotations

import json
import re
from collections import defaultdict

import numpy as np
import pytest

from analysis.figures import (
    find_gate_files,
    gate_heatmap_data,
    layer_map_data,
    plot_results,
    score_params_data,
    short_label,
    stage_data,
    stage_decision,
    strategy_heatmap_data,
)
from designspace.errors import DesignSpaceError
from designspace.experiment import Experiment
from designspace.plan import ModuleSpec, Plan
from designspace.refine import design_scores, stage_name
from designspace.space import Design, _fmt_choice
from designspace.stats import compare
from designspace.store import TrialStore

TASKS = ("sst2", "rte")


def _truth(d: Design) -> float:
    # LoRA in G1 and spindle grouping help; enough structure that choices differ.
    return 70 + 3 * ("lora" in d.strategies[0]) + 2 * (d.grouping == "spindle") + len(d.tuned_groups) / 2


def fill_store(folder, stages=("grouping", "tuned_groups", "strategies.G1"), per_choice=2, decide_last=True):
    """A results folder as the refiner leaves it: trials, one decision per stage, the final design."""
    exp = Experiment(name="synthetic", tasks=TASKS, stages=tuple(stages), output=str(folder))
    store = TrialStore(folder / "trials.sqlite")
    store.meta_set("experiment", exp.to_dict())
    rng = np.random.default_rng(0)
    space = exp.space
    for i, component in enumerate(stages):
        stage = stage_name(i, component)
        designs = space.sample_balanced(component, per_choice * len(space.choices(component)), seed=i)
        rows = []
        for d in designs:
            for t in TASKS:
                row = {"stage": stage, "design_id": d.id, "task": t, "seed": 0, "regime_id": "r", "status": "ok",
                       "design": d.to_dict(), "score": (_truth(d) + rng.normal(0, 1)) / 100,
                       "plan_params": 100_000 + 1000 * len(d.tuned_groups), "trainable_params": 101_538}
                store.record(row)
                rows.append(row)
        store.record({"stage": stage, "design_id": "broken", "task": "sst2", "seed": 0, "regime_id": "r",
                      "status": "failed", "design": designs[0].to_dict()})
        scores = design_scores(rows, 0, TASKS)
        by = defaultdict(list)
        for d in designs:
            by[_fmt_choice(d.choice(component))].append(scores[d.id])
        decision = compare(component, by, n_boot=200)
        if decide_last or i < len(stages) - 1:
            store.meta_set(f"decision:{stage}", decision.to_dict())
        best = next(c for c in space.choices(component) if _fmt_choice(c) == decision.best)
        space = space.restrict(component, best)
    for c in space.components():
        space = space.restrict(c, space.choices(c)[0])
    if decide_last:
        store.meta_set("final_design", space.only_design().to_dict())
    return exp, store


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("results")
    exp, store = fill_store(folder)
    yield folder, exp, store
    store.close()


def test_short_labels_abbreviate_strategy_sets_only():
    assert short_label("{adapter,bitfit,prefix}") == "{A,B,P}"
    assert short_label("{lora}") == "{L}"
    assert short_label("{1,2,4}") == "{1,2,4}"
    assert short_label("spindle") == "spindle"
    assert max(len(line) for line in short_label("a-very-long-choice name that goes on", 12).split("\n")) <= 12


def test_stage_data_is_the_decisions_edf_best_first(results):
    folder, exp, store = results
    decision, provisional = stage_decision(store, exp, "3-strategies.G1")
    data = stage_data("3-strategies.G1", decision, provisional)
    assert not provisional and data.component == "strategies.G1"
    assert len(data.choices) == 15
    assert [c.mean for c in data.choices] == sorted((c.mean for c in data.choices), reverse=True)
    assert data.choices[0].choice == decision.best
    for c in data.choices:
        assert c.scores == sorted(c.scores) and c.n == len(c.scores) == 2
        assert c.fractions == [0.5, 1.0]  # the EDF of two designs
        assert c.ci[0] <= c.mean <= c.ci[1]
        assert re.fullmatch(r"\{[ABLP](,[ABLP])*\}", c.label)
    assert "lora" in data.best  # LoRA in G1 is the synthetic truth (+3 points)


def test_undecided_stage_is_compared_from_its_finished_trials(tmp_path):
    exp, store = fill_store(tmp_path, stages=("grouping", "allocation"), decide_last=False)
    decision, provisional = stage_decision(store, exp, "2-allocation")
    assert provisional
    assert sorted(c.choice for c in decision.choices) == ["decreasing", "increasing", "uniform"]
    assert sum(c.n for c in decision.choices) == 6  # the failed trial's design has no score
    assert stage_decision(store, exp, "3-tuned_groups") is None
    store.close()


def _plan() -> Plan:
    design = Design(grouping="uniform", tuned_groups=(1, 2), strategies=(("lora",), ("adapter", "bitfit", "prefix"),
                                                                         ("lora",), ("lora",)))
    modules = (
        ModuleSpec(0, "lora", 8, ("attn_q", "attn_v"), 12_288),
        ModuleSpec(1, "adapter", 12, ("ffn_out",), 9_612),
        ModuleSpec(1, "bitfit", 1, ("attn_q", "attn_k", "attn_v", "attn_o", "ffn_in", "ffn_out", "ln_attn", "ln_ffn"),
                   4_224),
        ModuleSpec(1, "prefix", 5, ("attn",), 3_840),
    )
    return Plan("tiny", 4, 1_000_000, 0.05, 50_000, modules, (1, 2, 3, 4), design.to_dict())


def test_layer_map_writes_each_module_in_its_role_cells():
    data = layer_map_data(_plan())
    col = {c: i for i, c in enumerate(data.columns)}
    assert data.columns[:8] == ["attn", "attn_q", "attn_k", "attn_v", "attn_o", "ffn_in", "ffn_out", "ln"]
    assert data.cells[0][col["attn_q"]] == data.cells[0][col["attn_v"]] == "L r=8"
    assert data.cells[0][col["attn_k"]] == ""
    assert data.cells[1][col["ffn_out"]] == "A b=12\nB"
    assert data.cells[1][col["attn"]] == "P len=5"
    assert data.cells[1][col["ln"]] == "B"  # both layer norms share one cell, one label
    assert data.tuned == [True, True, False, False]
    assert data.layer_params == [12_288, 9_612 + 4_224 + 3_840, 0, 0]
    assert data.group_spans() == [(1, 0, 0), (2, 1, 1), (3, 2, 2), (4, 3, 3)]


def test_strategy_heatmap_marks_used_strategies_of_tuned_groups_only():
    plan = _plan()
    data = strategy_heatmap_data(Design.from_dict(plan.design), plan)
    assert data.strategies == ["adapter", "prefix", "bitfit", "lora"]
    assert data.used[0] == [False, False, False, True]
    assert data.used[1] == [True, True, True, False]
    assert data.used[2] == [False] * 4  # G3 holds {lora} but is not tuned
    assert data.tuned == [True, True, False, False]
    assert data.params[1] == [9_612, 3_840, 4_224, 0]
    assert data.group_layers == ["layer 0", "layer 1", "layer 2", "layer 3"]


def test_score_params_has_one_point_per_scored_design(results):
    folder, exp, store = results
    data = score_params_data(store, exp)
    assert data.stages == ["1-grouping", "2-tuned_groups", "3-strategies.G1"]
    assert len(data.points) == 2 * 5 + 2 * 15 + 2 * 15
    rows = store.trials("1-grouping", status="ok")
    expected = design_scores(rows, 0, TASKS)
    got = {p.design_id: p for p in data.points if p.stage == "1-grouping"}
    assert {d: p.score for d, p in got.items()} == pytest.approx(expected)
    d = rows[0]["design_id"]
    assert got[d].params == rows[0]["plan_params"]  # the plan's count, not the one with the task head
    assert "plan" in data.x_label
    assert data.spread == pytest.approx(104_000 / 101_000 - 1)  # 1 to 4 tuned groups
    assert data.final_design_id == Design.from_dict(store.meta_get("final_design")).id


def test_gate_heatmap_accepts_either_orientation_and_names_a_bad_shape(tmp_path):
    d = {"types": ["lora", "adapter", "bitfit"], "layers": [0, 1], "p": [[0.1, 0.9, 0.5], [0.2, 0.8, 0.4]]}
    data = gate_heatmap_data(d)
    assert data.p == [[0.1, 0.2], [0.9, 0.8], [0.5, 0.4]]  # given layers x types: transposed
    assert data.layers == ["0", "1"]
    with pytest.raises(DesignSpaceError, match="shape"):
        gate_heatmap_data({**d, "p": [[0.1, 0.2]]})
    with pytest.raises(DesignSpaceError, match="layers"):
        gate_heatmap_data({"types": [], "p": []})
    (tmp_path / "s3pet" / "run").mkdir(parents=True)
    (tmp_path / "s3pet" / "run" / "gate_heatmap.json").write_text(json.dumps(d))
    (tmp_path / "s3pet" / "gate_heatmap_notes.json").write_text(json.dumps({"other": 1}))
    assert find_gate_files(tmp_path) == [tmp_path / "s3pet" / "run" / "gate_heatmap.json"]


def test_plot_results_writes_every_figure_and_links_it_from_the_report(tmp_path):
    exp, store = fill_store(tmp_path, stages=("grouping", "strategies.G1"))
    store.close()
    d = {"types": ["lora", "adapter"], "layers": [0, 1, 2], "p": [[0.1, 0.5, 0.9], [0.3, 0.2, 0.7]]}
    (tmp_path / "s3pet").mkdir()
    (tmp_path / "s3pet" / "gate_heatmap.json").write_text(json.dumps(d))
    paths = plot_results(tmp_path, formats=("png", "svg"), backbone="minilm-l6")
    names = {p.name for p in paths}
    for stage in ("1-grouping", "2-strategies.G1"):
        assert {f"edf_{stage}.png", f"ci_{stage}.png", f"edf_{stage}.svg", f"ci_{stage}.svg"} <= names
    assert {"layer_map.png", "strategies.png", "score_vs_params.png", "gates_s3pet_gate_heatmap.png"} <= names
    assert len(paths) == 2 * 8
    assert all(p.stat().st_size > 1000 and p.parent == tmp_path / "figures" for p in paths)
    report = (tmp_path / "report.md").read_text()
    for p in paths:
        assert f"]({p.relative_to(tmp_path).as_posix()})" in report
    # A stage's figures sit in its own section, before the next stage's.
    assert report.index("![1-grouping](figures/edf_1-grouping.png)") < report.index("## Stage 2-strategies.G1")
    assert "![final](figures/layer_map.png)" in report
    assert "![score_vs_params](figures/score_vs_params.png)" in report


def test_plot_results_refuses_a_folder_without_results(tmp_path):
    with pytest.raises(DesignSpaceError, match="no trials.sqlite"):
        plot_results(tmp_path)
    assert not (tmp_path / "trials.sqlite").exists()
