"""A design found on one backbone is recompiled, trained and evaluated on another."""

from __future__ import annotations

import json

import pytest
import torch
from test_io_export import REGIME, hidden, text_backbone
from tiny import tiny_batch

from designspace import compile_plan as compile
from designspace.apply import apply_design, resolve_design
from designspace.errors import DesignSpaceError
from designspace.io import FILES
from designspace.plan import Plan
from designspace.presets import S4
from designspace.space import layer_groups

S4_LAYERS = {"adapter": [0, 1, 2], "lora": [0, 3], "prefix": [1, 2, 3], "bitfit": [2, 3]}


@pytest.mark.parametrize("family", ["t5", "gpt2"])
def test_s4_trains_on_tiny_family_and_leaves_the_backbone_as_it_was(family):
    backbone = text_backbone(family)
    ids, mask = tiny_batch()
    before = hidden(backbone.model, ids, mask, backbone.is_encoder_decoder)

    res = apply_design("s4", backbone, "sst2", REGIME)
    assert res["status"] == "ok", res["error"]
    plan = res["plan"]
    # Four layers, spindle: one layer per group, so each layer carries its group's S4 set.
    assert {s: v["layers"] for s, v in plan["by_strategy"].items()} == S4_LAYERS
    assert res["trainable_params"] == plan["params"] <= plan["budget_params"]
    assert res["steps"] == 4 and res["n_train"] == 64 and res["n_dev"] == 32
    assert 0.0 <= res["metrics"]["accuracy"] <= 1.0 and res["final_loss"] > 0
    # Hooks and prefixes are gone: the next design applied to this backbone starts from it unchanged.
    assert torch.equal(hidden(backbone.model, ids, mask, backbone.is_encoder_decoder), before)


def test_design_from_a_plan_is_recompiled_for_a_deeper_wider_backbone_of_another_family(tmp_path):
    options = {"lora_roles": ["attn_q", "attn_k", "attn_v"], "lora_scale": 1.0}
    source = compile(S4, text_backbone("bert"), 0.005, options=options)
    source.save(tmp_path / "found.json")
    target = text_backbone("llama", n_layers=8, hidden_size=48, intermediate_size=64)

    res = apply_design(tmp_path / "found.json", target, "sst2", REGIME, out_dir=tmp_path / "saved")
    assert res["status"] == "ok", res["error"]
    assert res["source_backbone"] == "tiny-bert" and res["design_id"] == source.design_id
    saved = Plan.load(tmp_path / "saved" / "plan.json")
    assert saved.n_layers == 8 and list(saved.groups) == layer_groups(8, "spindle")
    assert saved.budget_params == int(0.005 * target.n_params) != source.budget_params
    assert saved.options == options  # the source plan's LoRA roles and scale carry over
    assert all(m.roles == ("attn_q", "attn_k", "attn_v") for m in saved.modules if m.strategy == "lora")
    assert {f.name for f in (tmp_path / "saved").iterdir()} >= set(FILES)
    meta = json.loads((tmp_path / "saved" / "meta.json").read_text())
    assert meta["source_backbone"] == "tiny-bert" and meta["regime"]["n_train"] == 64
    assert res["saved_to"] == str(tmp_path / "saved")

    # The saved folder is itself a design source (apply a trained model's design elsewhere).
    design, plan, budget = resolve_design(tmp_path / "saved")
    assert design.id == source.design_id and plan["backbone"] == "tiny-llama" and budget == 0.005


def test_bad_design_sources_are_one_line_errors(tmp_path):
    with pytest.raises(DesignSpaceError, match="must hold plan.json"):
        resolve_design(tmp_path)
    with pytest.raises(DesignSpaceError, match="no such design file or preset; presets: s4"):
        resolve_design(tmp_path / "nope.yaml")
    assert resolve_design("s4") == (S4, None, None)


def test_a_design_found_at_five_percent_is_applied_and_reported_at_five_percent(tmp_path):
    """apply printed 0.500 % for a design it compiled at 5 %: the budget now has one home per step."""
    from designspace.apply import report_markdown
    from designspace.files import save_yaml

    path = save_yaml({"design": S4.to_dict(), "budget": 0.05}, tmp_path / "design.yaml")
    backbone = text_backbone("bert")
    res = apply_design(path, backbone, "sst2", REGIME)
    assert res["plan"]["budget"] == 0.05 and res["plan"]["budget_params"] == int(0.05 * backbone.n_params)
    assert "requested 5.0000%" in report_markdown(res)
    assert apply_design(path, backbone, "sst2", REGIME, budget=0.01)["plan"]["budget"] == 0.01
