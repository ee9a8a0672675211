"""Design spaces and designs: group sizes, validation messages, round trips, sampling."""

from __future__ import annotations

import json

import pytest

from designspace import PRESETS, Design, DesignSpace, DesignSpaceError, load_design
from designspace.files import load_design_file, load_yaml, save_yaml
from designspace.patterns import same_partition
from designspace.presets import S4
from designspace.space import ALLOCATION_PATTERNS, GROUPING_PATTERNS, group_sizes, layer_groups

#: The id of the S4 preset. If this changes, every stored trial loses its design: change the
#: canonical form only on purpose, and then migrate the stores. (The budget left the design in
#: schema 2: one design compiles to a plan per budget.)
S4_ID = "34a275960627"


def s4_design() -> Design:
    return S4

ONE_LORA = (("lora",),) * 4


# --- group sizes ----------------------------------------------------------------------------
@pytest.mark.parametrize("pattern", GROUPING_PATTERNS)
@pytest.mark.parametrize("n_layers", [6, 12, 24, 30])
def test_group_sizes_cover_every_layer(n_layers, pattern):
    sizes = group_sizes(n_layers, pattern)
    assert len(sizes) == 4
    assert sum(sizes) == n_layers
    assert min(sizes) >= 1
    shape_holds = {
        "increasing": sizes == sorted(sizes),
        "decreasing": sizes == sorted(sizes, reverse=True),
        "uniform": max(sizes) - min(sizes) <= 1,
        "spindle": min(sizes[1:3]) >= max(sizes[0], sizes[3]),
        "bottleneck": max(sizes[1:3]) <= min(sizes[0], sizes[3]),
    }
    assert shape_holds[pattern], sizes
    groups = layer_groups(n_layers, pattern)
    assert groups == sorted(groups) and [groups.count(g) for g in (1, 2, 3, 4)] == sizes


def test_group_sizes_of_the_paper():
    assert group_sizes(24, "spindle") == [4, 8, 8, 4]
    assert group_sizes(24, "uniform") == [6, 6, 6, 6]
    assert group_sizes(30, "spindle") == [5, 10, 10, 5]
    assert group_sizes(30, "bottleneck") == [10, 5, 5, 10]


@pytest.mark.parametrize("pattern", GROUPING_PATTERNS)
def test_fewer_layers_than_groups_is_an_error(pattern):
    with pytest.raises(DesignSpaceError, match="n_layers=3") as err:
        group_sizes(3, pattern)
    assert "\n" not in str(err.value)
    assert group_sizes(3, pattern, n_groups=3) == [1, 1, 1]


# --- invalid input --------------------------------------------------------------------------
INVALID = {
    "grouping": (lambda: Design(grouping="zigzag"), ["grouping", "'zigzag'", "spindle"]),
    "allocation": (lambda: Design(allocation="random"), ["allocation", "'random'", "decreasing"]),
    "space-grouping": (lambda: DesignSpace(groupings=("zigzag",)), ["groupings", "'zigzag'", "bottleneck"]),
    "space-allocation": (lambda: DesignSpace(allocations=("random",)), ["allocations", "'random'", "uniform"]),
    "strategy": (lambda: Design(strategies=(("lora", "dora"),) * 4), ["strategies.G1", "'dora'", "adapter"]),
    "space-strategy": (lambda: DesignSpace(strategy_pool=("lora", "vera")), ["strategy_pool", "'vera'", "ia3"]),
    "empty-set": (lambda: Design(strategies=((),) + ONE_LORA[1:]), ["strategies.G1", "[]", "non-empty", "lnfit"]),
    "empty-set-str": (lambda: Design(strategies=("",) + ONE_LORA[1:]), ["strategies.G1", "non-empty"]),
    "empty-pool": (lambda: DesignSpace(strategy_pool=()), ["strategy_pool", "[]", "non-empty"]),
    "empty-tuned": (lambda: Design(tuned_groups=()), ["tuned_groups", "[]", "1..4"]),
    "tuned-range": (lambda: Design(tuned_groups=(0, 5)), ["tuned_groups", "5", "1..4"]),
    "tuned-scalar": (lambda: Design.from_dict({"tuned_groups": 3}), ["tuned_groups", "3", "1..4"]),
    "space-empty-tuned": (lambda: DesignSpace(tuned_groups=()), ["tuned_groups", "[]", "1..4"]),
    "budget-in-design": (lambda: Design.from_dict({"budget": 0.005}), ["design.budget", "0.005", "not part of a design"]),
    "budget-in-space": (lambda: DesignSpace.from_dict({"budget": 0.005}), ["space.budget", "not part of a design"]),
    # A group the space does not have was silently dropped before.
    "space-unknown-group": (
        lambda: DesignSpace.from_dict({"strategies": {"G1": [["lora"]], "G5": [["lora"]]}}),
        ["space.strategies.G5", "G1..G4", "n_groups=4"],
    ),
    "unknown-key": (lambda: Design.from_dict({"groupng": "spindle"}), ["design.groupng", "'spindle'", "grouping"]),
    "space-unknown-key": (lambda: DesignSpace.from_dict({"colour": "red"}), ["space.colour", "'red'", "groupings"]),
    "unknown-group": (
        lambda: Design.from_dict({"strategies": {"G1": ["lora"], "G5": ["lora"]}}),
        ["strategies.G5", "G1..G4"],
    ),
    "missing-group": (lambda: Design.from_dict({"strategies": {"G1": ["lora"]}}), ["strategies", "G2", "every group"]),
    "n-groups": (lambda: Design.from_dict({"n_groups": "two"}), ["n_groups", "'two'", "integer"]),
    "not-a-mapping": (lambda: Design.from_dict(["spindle"]), ["design", "list", "mapping"]),
    "restrict": (lambda: DesignSpace(groupings=("spindle",)).restrict("grouping", "uniform"), ["grouping", "'uniform'", "spindle"]),
    "component": (lambda: DesignSpace().restrict("strategies.G9", ["lora"]), ["component", "strategies.G9", "strategies.G4"]),
    "preset": (lambda: load_design("s5"), ["s5", "s4", "all-lora"]),
}


@pytest.mark.parametrize("case", INVALID, ids=list(INVALID))
def test_invalid_input_is_one_line_naming_field_value_and_allowed(case):
    make, expected = INVALID[case]
    with pytest.raises(DesignSpaceError) as err:
        make()
    msg = str(err.value)
    assert "\n" not in msg
    for part in expected:
        assert part in msg, (part, msg)


BROKEN_YAML = {
    "unclosed-list": ("grouping: spindle\nallocation: [uniform\ntuned_groups: [1]\n", 3),
    "tab-indent": ("grouping: spindle\n\tallocation: uniform\n", 2),
    "nested-colon": ("grouping: spindle\nallocation: uniform: x\n", 2),
    "bad-alias": ("grouping: spindle\nallocation: *cheap\n", 2),
}


@pytest.mark.parametrize("case", BROKEN_YAML, ids=list(BROKEN_YAML))
def test_malformed_yaml_names_file_and_line(tmp_path, case):
    text, line = BROKEN_YAML[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    with pytest.raises(DesignSpaceError) as err:
        load_design(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert str(path) in msg and f"line {line}," in msg, msg


def test_bad_design_file_names_file_and_field(tmp_path):
    path = save_yaml({**s4_design().to_dict(), "colour": "red"}, tmp_path / "d.yaml")
    with pytest.raises(DesignSpaceError, match=r"d\.yaml: design\.colour='red'"):
        load_design(path)
    path.write_text("- spindle\n- uniform\n")
    with pytest.raises(DesignSpaceError, match="expected a mapping"):
        load_design(path)
    with pytest.raises(DesignSpaceError, match="no such design file"):
        load_design(tmp_path / "missing.yaml")


# --- round trips and ids ---------------------------------------------------------------------
def _designs() -> list[Design]:
    return [
        s4_design(),
        Design(grouping="bottleneck", allocation="decreasing", tuned_groups=(2, 4)),
        Design(strategies=(("ia3",), ("ia3", "lora"), ("bitfit",), ("prefix",))),
        Design(n_groups=3, tuned_groups=(1, 3), strategies=(("lnfit", "lora"), ("adapter",), ("prefix", "bitfit"))),
        *DesignSpace().sample(5, seed=3),
    ]


@pytest.mark.parametrize("design", _designs(), ids=lambda d: d.id)
def test_design_round_trips_through_dict_json_and_yaml(design, tmp_path):
    d = design.to_dict()
    assert Design.from_dict(d) == design
    assert Design.from_dict(json.loads(json.dumps(d))) == design
    assert Design.from_dict({**d, "id": design.id, "kind": "design"}) == design
    assert load_design(save_yaml(design, tmp_path / "d.yaml")) == design
    assert load_design(save_yaml(design, tmp_path / "d.json")) == design
    save_yaml({"design": d, "notes": "a wrapper file"}, tmp_path / "wrapped.yaml")
    assert load_design(tmp_path / "wrapped.yaml").id == design.id


def test_design_id_is_stable_and_canonical():
    assert s4_design().id == S4_ID
    assert load_design("s4").id == S4_ID
    # Same design written differently: key order, set order, case, duplicates, "a+b" strings.
    d = s4_design().to_dict()
    shuffled = dict(reversed(list(d.items())))
    shuffled["strategies"] = {"G4": "prefix+LoRA+bitfit+lora", "G3": ["prefix", "bitfit", "adapter"],
                              "G2": ["prefix", "adapter"], "G1": "lora, adapter"}
    shuffled["tuned_groups"] = [4, 3, 2, 1, 1]
    assert Design.from_dict(shuffled).id == S4_ID
    assert s4_design().with_choice("grouping", "uniform").id != S4_ID


def test_presets_load_with_their_strategy():
    for name, design in PRESETS.items():
        assert load_design(name) == design
        if name.startswith("all-"):
            assert design.strategies == ((name[4:],),) * 4 and design.tuned_groups == (1, 2, 3, 4)
    assert PRESETS["unipelt"].strategies[0] == ("adapter", "lora", "prefix")


def test_a_design_file_carries_the_budget_it_was_found_at(tmp_path):
    path = save_yaml({"design": S4.to_dict(), "budget": 0.01}, tmp_path / "found.yaml")
    assert load_design_file(path) == (S4, 0.01)
    assert load_design_file("s4") == (S4, None)


SPACES = {
    "default": DesignSpace(),
    "narrowed": DesignSpace().restrict("grouping", "spindle").restrict("strategies.G2", [["lora"], ["adapter", "prefix"]]),
    "three-groups": DesignSpace(n_groups=3, strategy_pool=("lora", "lnfit", "bitfit")),
}


@pytest.mark.parametrize("name", SPACES)
def test_space_round_trips_through_dict_and_yaml(name, tmp_path):
    space = SPACES[name]
    assert DesignSpace.from_dict(space.to_dict()) == space
    assert DesignSpace.from_dict(json.loads(json.dumps(space.to_dict()))) == space
    assert DesignSpace.from_dict(load_yaml(save_yaml(space, tmp_path / "s.yaml"))) == space


@pytest.mark.parametrize(
    "component, choice",
    [
        ("grouping", "spindle"),
        ("allocation", "increasing"),
        ("tuned_groups", [1, 4]),
        ("tuned_groups", [(1, 2), (3,)]),
        ("strategies.G3", ["lora", "prefix"]),
        ("strategies.G1", [["lora"], ["adapter"]]),
    ],
)
def test_restrict_narrows(component, choice):
    space = DesignSpace()
    narrow = space.restrict(component, choice)
    n_choices = len(choice) if isinstance(choice[0], (list, tuple)) else 1
    assert len(narrow.choices(component)) == n_choices
    assert narrow.size() * len(space.choices(component)) == space.size() * n_choices
    for other in space.components():
        if other != component:
            assert narrow.choices(other) == space.choices(other)
    for d in narrow.sample(20, seed=1):
        assert narrow.contains(d) and space.contains(d)
    outside = [d for d in space.sample(50, seed=2) if not narrow.contains(d)]
    assert outside, "the restricted space should exclude some designs of the full space"


def test_fully_restricted_space_has_one_design():
    space = DesignSpace()
    d = s4_design()
    for component, choice in [("grouping", d.grouping), ("allocation", d.allocation), ("tuned_groups", list(d.tuned_groups))]:
        space = space.restrict(component, choice)
    with pytest.raises(DesignSpaceError, match="still holds"):
        space.only_design()
    for g, strategies in enumerate(d.strategies, 1):
        space = space.restrict(f"strategies.G{g}", list(strategies))
    assert space.is_single() and space.only_design() == d


def test_sample_is_contained_unique_and_seeded():
    space = DesignSpace()
    designs = space.sample(100, seed=5)
    assert len(designs) == 100 and len({d.id for d in designs}) == 100
    assert all(space.contains(d) for d in designs)
    assert [d.id for d in space.sample(100, seed=5)] == [d.id for d in designs]
    assert [d.id for d in space.sample(100, seed=6)] != [d.id for d in designs]
    small = space.restrict("grouping", "uniform").restrict("allocation", "uniform").restrict("tuned_groups", [1])
    small = small.restrict("strategies.G1", [["lora"], ["adapter"]])
    for g in (2, 3, 4):
        small = small.restrict(f"strategies.G{g}", ["lora"])
    assert small.size() == 2 and len(small.sample(10)) == 2


@pytest.mark.parametrize("component", ["grouping", "allocation", "tuned_groups", "strategies.G2"])
def test_with_choice_changes_one_component(component):
    base = S4
    for choice in DesignSpace().choices(component)[:5]:
        d = base.with_choice(component, choice)
        assert d.choice(component) == choice
        for other in DesignSpace().components():
            if other != component:
                assert d.choice(other) == base.choice(other)


def test_identical_partitions_are_one_class():
    # 6 layers in 4 groups: uniform and decreasing are both 2/2/1/1 (the grouping stage merges them).
    assert group_sizes(6, "uniform") == group_sizes(6, "decreasing") == [2, 2, 1, 1]
    classes = same_partition(6, GROUPING_PATTERNS, 4)
    assert ["uniform", "decreasing"] in classes and sum(len(c) for c in classes) == 5
    assert all(len(c) == 1 for c in same_partition(24, GROUPING_PATTERNS, 4))


def test_a_space_file_that_names_some_groups_keeps_every_set_for_the_others():
    space = DesignSpace.from_dict({"strategies": {"G2": [["lora"], ["adapter"]]}})
    assert space.choices("strategies.G2") == (("lora",), ("adapter",))
    assert len(space.choices("strategies.G1")) == 15


def test_pattern_constants_match_the_paper():
    assert set(GROUPING_PATTERNS) == {"increasing", "uniform", "decreasing", "spindle", "bottleneck"}
    assert set(ALLOCATION_PATTERNS) == {"increasing", "uniform", "decreasing"}
    # Default space: every non-empty subset of the groups and of the four strategies.
    space = DesignSpace()
    assert len(space.tuned_groups) == 15 and all(len(s) == 15 for s in space.strategies)
