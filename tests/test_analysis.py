"""Figure data of a refinement, from a store the refiner filled with synthetic trials (no training)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from designspace.analysis.data import (
    Results,
    block_profile_data,
    edf_data,
    effects_data,
    gate_heatmap_data,
    layer_map_data,
    score_params_data,
    search_gate_heatmaps,
    short_label,
    stage_table,
    strategy_heatmap_data,
)
from designspace.analysis.figures import find_gate_files, load_experiment, plot_results
from designspace.decision import Verdict, decide
from designspace.errors import DesignSpaceError
from designspace.experiment import Experiment
from designspace.plan import ModuleSpec, Plan
from designspace.space import Design
from designspace.stage import stage_table as refiner_table
from designspace.store import TrialStore
from designspace.strategies import registry
from designspace.strategies.base import Strategy
from designspace.trial import Status, TrialRecord, TrialSpec

EXPERIMENT = {
    "name": "syn", "tasks": ["sst2"], "backend": "sequential", "blocks": 3, "max_rounds": 3, "margin": 2.5,
    "stages": ["grouping", "allocation", "strategies.G1"],
    "space": {"strategy_pool": ["lora", "ia3", "adapter"],
              "strategies": {"G1": [["ia3"], ["lora"], ["ia3", "lora"]]}},
    # spindle best, bottleneck far worse (falls first), the others fall later; allocation separates at
    # once; the three G1 sets are equal, so that stage ends in a tie within the 2.5-point margin.
    "scorer": {"synthetic": {"effects": {"grouping": {"spindle": 1.5, "bottleneck": -5.0},
                                         "allocation": {"uniform": 4.0}}, "noise_sd": 0.8, "n_layers": 6}},
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from designspace.refine import Refiner

    out = tmp_path_factory.mktemp("syn")
    experiment = Experiment.from_dict({**EXPERIMENT, "output": str(out)})
    Refiner(experiment, progress=False, log=lambda m: None).run()
    return out


@pytest.fixture(scope="module")
def results(folder):
    with TrialStore(folder / "trials.sqlite", create=False, readonly=True) as store:
        yield Results.read(store, load_experiment(folder, store))


def _state(results, name):
    return next(s for s in results.states if s.name == name)


@pytest.fixture
def zeta():
    """A strategy registered for one test: figures must show it with no edit to analysis/."""

    class Zeta(Strategy):
        name, label, color, sized, default_roles = "zeta", "Z", "#123456", False, ("attn_o",)

        def unit_cost(self, layer, roles):
            return 0

        def init(self, layer, size, role, roles, options):
            return {}

        def transform(self, pet, role, x, out):
            return out

    registry.register(Zeta())
    yield "zeta"
    registry.unregister("zeta")


def test_the_fixture_has_every_kind_of_stage(results):
    statuses = {s.name: s.status for s in results.states}
    assert statuses == {"1-grouping": "separated", "2-allocation": "separated", "3-strategies.G1": "tie"}
    fell = _state(results, "1-grouping").verdict().eliminated
    assert fell["bottleneck"] == 1 and max(fell.values()) > 1  # one falls early, others in a later round


def test_a_moved_folder_reads_its_experiment_from_the_store_when_the_file_disagrees(folder, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(folder, moved)
    (moved / "experiment.json").write_text(json.dumps({**EXPERIMENT, "margin": 0.1}))  # edited after the run
    with TrialStore(moved / "trials.sqlite", create=False, readonly=True) as store:
        e = load_experiment(moved, store)
        assert e.margin == 2.5 and e.changed_field(store.note("experiment")) is None
        assert e.out_dir == moved and e.store_path == moved / "trials.sqlite"


def test_short_labels_use_each_strategys_own_letter(zeta):
    assert short_label("{adapter,ia3}") == "{A,I}"
    assert short_label("{lora,zeta}") == "{L,Z}"
    assert short_label("{1,3}") == "{1,3}"  # tuned groups, not strategies
    assert short_label("uniform=decreasing") == "uniform=decreasing"
    assert max(len(x) for x in short_label("a-very-long-choice name that goes on", 12).split("\n")) <= 12


def test_effects_plot_the_verdicts_intervals_and_the_round_each_choice_fell(results):
    for state in results.states:
        data, v = effects_data(state), state.verdict()
        assert [c.diff for c in data.choices] == sorted((c.diff for c in data.choices), reverse=True)
        for c in data.choices:
            stored = v.choice(c.choice)
            assert (c.diff, c.lower, c.upper) == (stored.diff, stored.lower, stored.upper)
            assert c.effect == stored.effect
            assert c.eliminated_round == stored.eliminated_round
            assert (c.status == "eliminated") == (c.eliminated_round is not None)
            if c.eliminated_round:
                assert c.upper < 0  # shown worse: the whole interval below zero
    grouping = effects_data(_state(results, "1-grouping"))
    assert [c.status for c in grouping.choices].count("best") == 1 and grouping.choices[0].choice == "spindle"
    tie = effects_data(_state(results, "3-strategies.G1"))
    assert {c.status for c in tie.choices} == {"tie"} and tie.delta == 2.5
    assert all(c.lower > -2.5 for c in tie.choices)  # what a tie means: each within the margin
    assert {c.label for c in tie.choices} == {"{I}", "{L}", "{I,L}"}


def test_blocks_are_the_table_the_decision_judged(results):
    e = results.experiment
    for state in results.states:
        cells = results.cells(state)
        table = stage_table(cells, state.labels)
        expected, _ = refiner_table(state, len(state.verdicts) - 1, results.records, results.make_spec,
                                    e.tasks, e.seeds_per_design)
        np.testing.assert_array_equal(table, expected)
        # Deciding that table again gives the stored verdict: the blocks drawn are the evidence used.
        previous = Verdict.from_dict(state.verdicts[-2]) if len(state.verdicts) > 1 else None
        again = decide(table, alpha=e.alpha, max_rounds=e.max_rounds, round_index=len(state.verdicts),
                       delta=e.margin, choices=state.labels, previous=previous, component=state.component,
                       seed=e.seed)
        assert again.to_dict() == state.verdicts[-1]


def test_block_profile_stops_a_choice_after_the_round_it_fell(results):
    state = _state(results, "1-grouping")
    order = [c.choice for c in effects_data(state).choices]
    data = block_profile_data(state, results.cells(state), order)
    assert data.choices == order and data.eliminated == state.verdict().eliminated
    assert len(data.blocks) == sum(len(r.blocks) for r in state.rounds)
    for choice, fell in data.eliminated.items():
        j = order.index(choice)
        assert all((b.scores[j] is None) == (b.round > fell) for b in data.blocks), choice
    assert all(b.scores[order.index("spindle")] is not None for b in data.blocks)
    assert [b.block for b in data.blocks] == list(range(len(data.blocks)))


def test_edf_only_where_a_choice_has_enough_designs(results):
    allocation = _state(results, "2-allocation")  # one round of 3 blocks: too few for an EDF
    assert edf_data(allocation, results.cells(allocation)) is None
    tie = _state(results, "3-strategies.G1")
    data = edf_data(tie, results.cells(tie))
    n = sum(len(r.blocks) for r in tie.rounds)
    for s in data.series:
        assert s.n == n and s.scores == sorted(s.scores)
        assert s.fractions == [(i + 1) / n for i in range(n)]
        assert s.mean == pytest.approx(tie.verdict().choice(s.choice).mean)


def test_score_params_counts_only_what_the_store_lacks(results):
    cells = {s.name: results.cells(s) for s in results.states}
    assert all(c.params == 0 for cs in cells.values() for c in cs)  # the synthetic scorer builds no plan
    data = score_params_data(cells, count=lambda d: 1000 * len(d.tuned_groups))
    assert len(data.points) == sum(np.isfinite(c.score) for cs in cells.values() for c in cs)
    assert {p.params for p in data.points} <= {1000, 2000, 3000, 4000} and "compiled" in data.x_label
    cells["1-grouping"][0].params = 77  # a recorded count wins over counting
    first = score_params_data(cells, count=lambda d: 1).points[0]
    assert first.params == 77 and first.stage == "1-grouping"
    assert score_params_data(cells).points == [first]  # nothing to count with: only recorded counts


def _plan() -> Plan:
    design = Design(grouping="uniform", tuned_groups=(1, 2),
                    strategies=(("ia3", "lora"), ("lnfit",), ("lora",), ("lora",)))
    modules = (ModuleSpec(0, "ia3", 1, ("attn_k", "attn_v", "ffn_out"), 1_152),
               ModuleSpec(0, "lora", 8, ("attn_q", "attn_v"), 12_288),
               ModuleSpec(1, "lnfit", 1, ("ln_attn", "ln_ffn"), 768))
    return Plan("tiny", 4, 1_000_000, 0.05, 50_000, modules, (1, 2, 3, 4), design.to_dict())


def test_layer_map_puts_each_module_in_its_role_cells_with_its_own_label():
    data = layer_map_data(_plan())
    col = {c: i for i, c in enumerate(data.columns)}
    assert data.columns == ["attn_q", "attn_k", "attn_v", "ffn_out", "ln"]  # role-map order, used roles only
    assert data.cells[0][col["attn_k"]] == "I" and data.cells[0][col["attn_q"]] == "L r=8"
    assert data.cells[0][col["attn_v"]] == "I\nL r=8"
    assert data.cells[1][col["ln"]] == "N"  # both layer norms share one cell, one label
    assert data.tuned == [True, True, False, False]
    assert data.layer_params == [1_152 + 12_288, 768, 0, 0]
    assert data.legend == ["L = lora (r = rank)", "N = lnfit", "I = ia3"]


def test_strategy_heatmap_takes_columns_colours_and_letters_from_the_registry(zeta):
    design = Design(tuned_groups=(1, 3), strategies=(("lora", "zeta"), ("ia3",), ("ia3",), ("lora",)))
    data = strategy_heatmap_data(design, pool=("adapter",))
    assert data.strategies == ["adapter", "lora", "ia3", "zeta"]  # the pool and the design's, registry order
    assert data.labels == ["A", "L", "I", "Z"]
    assert data.colors == [registry.get(s).color for s in data.strategies] and data.colors[3] == "#123456"
    assert data.used[0] == [False, True, False, True]
    assert data.used[1] == [False] * 4  # G2 holds {ia3} but is not tuned
    assert data.used[2] == [False, False, True, False]
    plan = _plan()
    with_plan = strategy_heatmap_data(Design.from_dict(plan.design), plan)
    assert with_plan.strategies == ["lora", "lnfit", "ia3"]
    assert with_plan.params[0] == [12_288, 0, 1_152] and with_plan.params[1] == [0, 768, 0]
    assert with_plan.group_layers == ["layer 0", "layer 1", "layer 2", "layer 3"]


def _search_heatmap() -> dict:
    from designspace.s3pet.structure import heatmap_data

    candidates = [ModuleSpec(0, "lora", 4, ("attn_q",), 10), ModuleSpec(1, "lora", 4, ("attn_q",), 10),
                  ModuleSpec(1, "adapter", 2, ("ffn_out",), 20), ModuleSpec(2, "bitfit", 1, ("ln_ffn",), 5)]
    return heatmap_data(candidates, [0.9, 0.2, 0.7, 0.4], chosen=[0, 2])


def test_gate_heatmap_reads_what_the_search_writes(tmp_path):
    d = _search_heatmap()
    data = gate_heatmap_data(json.loads(json.dumps(d)), "gates")  # as saved in <stem>.heatmap.json
    assert data.rows == ["lora@attn_q", "adapter@ffn_out", "bitfit@ln_ffn"] and data.layers == ["0", "1", "2"]
    assert data.p == [[0.9, 0.2, None], [None, 0.7, None], [None, None, 0.4]]  # None: no candidate there
    assert data.chosen == [[True, False, False], [False, True, False], [False, False, False]]
    with pytest.raises(DesignSpaceError, match="rows, layers, p and chosen"):
        gate_heatmap_data({"types": ["lora"], "layers": [0], "p": [[0.5]]})  # the old, unwritten schema
    with pytest.raises(DesignSpaceError, match="3 rows x 3 layers"):
        gate_heatmap_data({**d, "p": d["p"][:2]})
    (tmp_path / "structures").mkdir()
    (tmp_path / "structures" / "sst2_b0.005_s0.heatmap.json").write_text(json.dumps(d))
    (tmp_path / "structures" / "notes.heatmap.json").write_text(json.dumps({"other": 1}))
    (tmp_path / "gates.json").write_text(json.dumps(d))
    assert find_gate_files(tmp_path) == [tmp_path / "structures" / "sst2_b0.005_s0.heatmap.json"]


def _search_record(heatmap: dict) -> TrialRecord:
    spec = TrialSpec(task="sst2", kind="search", search={"steps": 10}, label="s3pet", seed=3)
    return TrialRecord(spec, Status.OK, score=0.8, result={"heatmap": heatmap})


def test_search_records_of_the_store_give_gate_heatmaps():
    train = TrialRecord(TrialSpec(task="sst2", design=Design()), Status.OK, score=0.8)
    found = search_gate_heatmaps([train, _search_record(_search_heatmap())])
    assert len(found) == 1
    (name, data), = found.items()
    assert name.startswith("gates_sst2_s3_") and "s3pet on sst2" in data.title
    assert data.p[0] == [0.9, 0.2, None]


def test_plot_results_writes_every_figure_and_links_it_from_the_report(folder):
    with TrialStore(folder / "trials.sqlite") as store:
        store.record(_search_record(_search_heatmap()))
    (folder / "structures").mkdir()
    (folder / "structures" / "sst2_b0.005_s0.heatmap.json").write_text(json.dumps(_search_heatmap()))
    paths = plot_results(folder, formats=("png", "svg"))
    names = {p.name for p in paths}
    stems = {p.name.rsplit(".", 1)[0] for p in paths}
    for stage in ("1-grouping", "2-allocation", "3-strategies.G1"):
        assert {f"effects_{stage}", f"blocks_{stage}"} <= stems
    assert "edf_3-strategies.G1" in stems and "edf_2-allocation" not in stems  # 3 designs per choice: no EDF
    assert {"layer_map", "strategies", "score_vs_params", "gates_structures_sst2_b0.005_s0"} <= stems
    assert any(s.startswith("gates_sst2_s3_") for s in stems)  # from the store's search record
    assert {p.suffix for p in paths} == {".png", ".svg"} and len(names) == 2 * len(stems)
    assert all(p.stat().st_size > 1000 and p.parent == folder / "figures" for p in paths)
    report = (folder / "report.md").read_text()
    for p in paths:
        assert f"]({p.relative_to(folder).as_posix()})" in report
    # A stage's figures sit in its own section, before the next stage's; the design's under its heading.
    assert report.index("(figures/blocks_1-grouping.png)") < report.index("## Stage 2-allocation")
    assert report.index("## Discovered design") < report.index("![final](figures/layer_map.png)")
    assert report.index("## More figures") < report.index("(figures/score_vs_params.png)")
    # Same results, same bytes: a replot leaves committed figures unchanged in git.
    svgs = {p: p.read_bytes() for p in paths if p.suffix == ".svg"}
    plot_results(folder, formats=("svg",))
    assert all(p.read_bytes() == b for p, b in svgs.items())


def test_plot_results_needs_results_and_draws_a_search_folder_alone(tmp_path):
    with pytest.raises(DesignSpaceError, match="no trials.sqlite"):
        plot_results(tmp_path)
    assert not (tmp_path / "trials.sqlite").exists()
    (tmp_path / "run.heatmap.json").write_text(json.dumps(_search_heatmap()))
    assert [p.name for p in plot_results(tmp_path, formats=("png",))] == ["gates_run.png"]


def test_figure_data_imports_neither_torch_nor_matplotlib():
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", "import designspace.analysis.data"],
                         capture_output=True, text=True, check=True).stderr
    modules = {line.rsplit("|", 1)[-1].strip() for line in out.splitlines() if "|" in line}
    assert not {m for m in modules if m.split(".")[0] in ("torch", "matplotlib")}


def test_paired_figure_data_pairs_by_seed_and_adjusts_the_last_column(tmp_path):
    """The final comparison's forest plots: each cell is the paired t interval over the seeds both
    methods have; the Holm p is the average column's, as in the README's family line."""
    from designspace.analysis.data import paired_data
    from designspace.analysis.render import render_paired

    scores = {"sst2": {"ref": {0: 80.0, 1: 82.0, 2: 81.0, 3: 90.0}, "a": {0: 79.0, 1: 80.0, 2: 81.5},
                       "b": {0: 70.0, 1: 71.0, 2: 69.0}},
              "average": {"ref": {0: 1.0, 1: 2.0, 2: 3.0}, "a": {0: 1.0, 1: 2.5, 2: 2.0}, "b": {0: 0.0, 1: 0.2, 2: 0.1}}}
    data = paired_data(scores, "ref", ["a", "b", "absent"], "t")
    a, b, absent = data.rows
    mean, lo, hi = a.cells[0]
    assert mean == pytest.approx(1.0 / 3 * (1 + 2 - 0.5)) and lo < 0 < hi  # seed 3 has no partner
    assert b.cells[0][1] > 0 and absent.cells == [None, None] and absent.adjusted_p is None
    from designspace.compare import holm, paired_difference

    ps = [paired_difference(scores["average"]["ref"], scores["average"][m])["p"] for m in ("a", "b")]
    assert [a.adjusted_p, b.adjusted_p] == holm(ps)
    paths = render_paired(data, tmp_path / "f", ("png",))
    assert paths == [tmp_path / "f.png"] and paths[0].stat().st_size > 0
