"""Saved models reload exactly; all-LoRA plans export to peft with the same outputs; the rest is refused."""

from __future__ import annotations

import functools
import json
from dataclasses import replace

import pytest
import torch
import transformers as T
from tiny import tiny_backbone, tiny_batch, tiny_config

from designspace import compile_plan as compile
from designspace.backbones import Backbone, load_backbone
from designspace.backbones.offline import resolve_backbone_path
from designspace.data import collate, tokenise
from designspace.errors import DesignSpaceError
from designspace.export import export_peft, to_peft, unsupported
from designspace.io import load_trained, save_trained
from designspace.metrics import compute_metrics
from designspace.model import PETModel, shift_right
from designspace.presets import S4, single_strategy
from designspace.regime import Regime
from designspace.space import Design
from designspace.tasks import get_task
from designspace.train import evaluate_model, train_design


def s4_design() -> Design:
    return S4

peft = pytest.importorskip("peft")

REGIME = Regime(n_train=64, n_dev=32, max_length=32)


@functools.cache
def minilm_tokenizer():
    return T.AutoTokenizer.from_pretrained(resolve_backbone_path("minilm-l6"))


def text_backbone(family: str, n_layers: int = 4, seed: int = 0, **config) -> Backbone:
    """A tiny random ``family`` model that reads MiniLM's word pieces, so it trains on real SST-2 rows."""
    tok = minilm_tokenizer()
    cfg = tiny_config(family, n_layers)
    for k, v in (config | {"vocab_size": tok.vocab_size}).items():
        setattr(cfg, k, v)
    torch.manual_seed(seed)
    model = T.AutoModel.from_config(cfg).eval()
    return Backbone.from_model(model, name=f"tiny-{family}", tokenizer=tok)


def dev_logits(model: PETModel, tokenizer):
    spec = get_task("sst2")
    dev = tokenise(spec, "dev", tokenizer, REGIME.max_length, REGIME.n_dev, 0)
    preds, labels = evaluate_model(model, dev, REGIME, tokenizer.pad_token_id, False, "cpu")
    with torch.inference_mode():
        batches = [collate(dev[i : i + 8], tokenizer.pad_token_id, "cpu", False) for i in range(0, len(dev), 8)]
        logits = torch.cat([model(**b) for b in batches])
    return logits, compute_metrics(spec, preds, labels)


def randomise(model: PETModel, seed: int = 1) -> None:
    """LoRA's B starts at zero, which would make any two models agree: give every PET weight a value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.pet.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def hidden(module, ids, mask, encoder_decoder: bool):
    kw = {}
    if encoder_decoder:  # T5: the decoder reads the input shifted right, as PETModel feeds it
        base = module.get_base_model() if hasattr(module, "get_base_model") else module
        kw["decoder_input_ids"] = shift_right(ids, base.config)
    with torch.no_grad():
        return module(input_ids=ids, attention_mask=mask, **kw).last_hidden_state


# --- save / load ---------------------------------------------------------------------------
def test_saved_s4_reloads_into_fresh_backbone_with_identical_logits_and_metric(tmp_path):
    # Decoder-only, with every S4 strategy and a prefix MLP that must be folded on save.
    backbone = text_backbone("llama")
    plan = compile(s4_design(), backbone, 0.005, options={"prefix_reparam_hidden": 8})
    result, model = train_design(plan, backbone, "sst2", REGIME, keep_model=True)
    assert result.ok, result.error
    before, _ = dev_logits(model, backbone.tokenizer)
    save_trained(model, plan, tmp_path, "SST-2", metrics=result.metrics)
    after_fold, _ = dev_logits(model, backbone.tokenizer)
    assert torch.equal(before, after_fold)  # folding changes the parameters, not the function

    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["task"] == "sst2" and meta["backbone"] == "tiny-llama" and meta["metrics"] == result.metrics
    from safetensors.torch import load_file

    keys = load_file(str(tmp_path / "pet.safetensors"))
    assert not any(".mlp." in k or k.endswith(".embed") for k in keys)
    assert sum(v.numel() for v in keys.values()) == plan.params

    model.pet.detach()
    loaded = load_trained(tmp_path, text_backbone("llama"))
    logits, metrics = dev_logits(loaded, backbone.tokenizer)
    assert torch.equal(logits, before)
    assert metrics == result.metrics


def test_load_refuses_a_backbone_of_another_depth(tmp_path):
    backbone = text_backbone("bert")
    model = PETModel(backbone, compile(single_strategy("lora"), backbone, 0.005), num_labels=2)
    save_trained(model, None, tmp_path, "sst2")
    with pytest.raises(DesignSpaceError, match="trained on tiny-bert .* 4 layers.* 8 layers"):
        load_trained(tmp_path, text_backbone("bert", n_layers=8))
    with pytest.raises(DesignSpaceError, match="not a saved designspace model"):
        load_trained(tmp_path / "nowhere")


@pytest.fixture(scope="module")
def minilm_saved(tmp_path_factory):
    """MiniLM with an all-LoRA design of per-layer ranks, trained briefly on SST-2 and saved."""
    out = tmp_path_factory.mktemp("minilm")
    backbone = load_backbone("minilm-l6")
    design = Design(grouping="increasing", allocation="increasing", strategies=(("lora",),) * 4)
    result, model = train_design(design, backbone, "sst2", replace(REGIME, n_train=32), keep_model=True)
    assert result.ok, result.error
    save_trained(model, None, out, "sst2", metrics=result.metrics)
    logits, _ = dev_logits(model, backbone.tokenizer)
    enc = backbone.tokenizer(["a gripping , funny film", "dull"], padding=True, return_tensors="pt")
    states = hidden(backbone.model, enc["input_ids"], enc["attention_mask"], False)
    model.pet.detach()
    return out, result, logits, backbone.tokenizer, enc, states


def test_minilm_reloads_by_name_with_identical_metric(minilm_saved):
    out, result, logits, tok, _, _ = minilm_saved
    loaded = load_trained(out)  # backbone read from meta.json: a fresh load_backbone("minilm-l6")
    new_logits, metrics = dev_logits(loaded, tok)
    assert metrics == result.metrics and torch.equal(new_logits, logits)


# --- peft export ---------------------------------------------------------------------------
def _allora(tuned=(1, 3, 4)) -> Design:
    # increasing allocation over the tuned groups: layers get different ranks, untuned layers none.
    return Design(grouping="spindle", allocation="increasing", tuned_groups=tuned, strategies=(("lora",),) * 4)


@pytest.mark.parametrize("family,roles,tuned,readable", [
    ("bert", ["attn_q", "attn_v", "ffn_out"], (1, 3, 4), None),  # 'output.dense' ends attn_o's name too
    ("llama", ["attn_q", "attn_v", "ffn_out"], (1, 3, 4),
     ("layers", [0, 2, 3], ["mlp.down_proj", "self_attn.q_proj", "self_attn.v_proj"])),
    ("t5", ["attn_q", "attn_k", "ffn_in"], (1, 3, 4), None),  # two stacks share layer indices
    ("t5", ["attn_q", "attn_v"], (3, 4),  # decoder only: its blocks 0 and 1
     ("decoder.block", [0, 1], ["layer.0.SelfAttention.q", "layer.0.SelfAttention.v"])),
    ("gpt2", ["attn_o", "ffn_in"], (1, 3, 4), ("h", [0, 2, 3], ["attn.c_proj", "mlp.c_fc"])),  # Conv1D
])
def test_peft_model_computes_our_outputs(family, roles, tuned, readable):
    backbone = tiny_backbone(family)
    plan = compile(_allora(tuned=tuned), backbone, 0.05, options={"lora_roles": roles, "lora_scale": 1.5})
    assert len({m.size for m in plan.modules}) > 1
    model = PETModel(backbone, plan, num_labels=2)
    randomise(model)
    ids, mask = tiny_batch()
    ours = hidden(backbone.model, ids, mask, backbone.is_encoder_decoder)

    config, state = to_peft(model)
    fresh = tiny_backbone(family)
    pm = peft.get_peft_model(fresh.model, config)
    res = peft.set_peft_model_state_dict(pm, state)
    assert not res.unexpected_keys
    assert sum(p.numel() for p in pm.parameters() if p.requires_grad) == plan.params
    theirs = hidden(pm, ids, mask, backbone.is_encoder_decoder)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    with pm.disable_adapter():
        assert (hidden(pm, ids, mask, backbone.is_encoder_decoder) - ours).abs().max() > 1e-3
    if readable:  # role paths + layer indices, rather than one full name per module
        assert (config.layers_pattern, config.layers_to_transform, sorted(config.target_modules)) == readable
    else:
        assert config.layers_to_transform is None and len(config.target_modules) == len(state) // 2


def test_minilm_export_folder_loads_in_peft_with_our_outputs(minilm_saved, tmp_path):
    out, _, _, _, enc, expected = minilm_saved
    adapter = export_peft(out, tmp_path / "peft")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in adapter.iterdir()}
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert len(set(config["rank_pattern"].values()) | {config["r"]}) > 1
    for name, r in config["rank_pattern"].items():
        assert config["alpha_pattern"][name] / r == config["lora_alpha"] / config["r"] == 2.0
    base = T.AutoModel.from_pretrained(resolve_backbone_path("minilm-l6")).eval()
    pm = peft.PeftModel.from_pretrained(base, str(adapter))
    torch.testing.assert_close(hidden(pm, enc["input_ids"], enc["attention_mask"], False), expected, atol=1e-5, rtol=0)
    with pm.disable_adapter():
        plain = hidden(pm, enc["input_ids"], enc["attention_mask"], False)
    assert (plain - expected).abs().max() > 1e-3  # the comparison above was not between two plain models


@pytest.mark.parametrize("design,family,options,message", [
    (s4_design(), "bert", {}, r"adapter in layer 0: peft has no sequential bottleneck.*; "
                                  r"prefix in layer 1 \(length \d+\): .*; bitfit in layer 2: peft has no bias-only tuner"),
    (single_strategy("bitfit"), "llama", {}, r"bitfit in layer 0: peft has no bias-only tuner"),
    (single_strategy("prefix"), "bert", {}, r"prefix in layer 0 \(length 10\): peft's prefix tuning has one length"),
    (Design(tuned_groups=(2, 3), strategies=(("prefix",),) * 4), "bert", {},
     r"prefix in 2 of 4 layers: peft's prefix tuning puts prefixes in every layer"),
    (_allora(), "gpt2", {}, r"LoRA on attn_q in layer 0: .*part \(1 of 3\) of the fused projection h\.0\.attn\.c_attn"),
])
def test_what_peft_cannot_express_is_one_line_error(design, family, options, message):
    backbone = tiny_backbone(family)
    with pytest.raises(DesignSpaceError, match=message) as info:
        to_peft(compile(design, backbone, 0.05, options=options), backbone)
    assert "\n" not in str(info.value)


def test_equal_prefixes_everywhere_are_refused_for_another_reason():
    backbone = tiny_backbone("bert")
    plan = compile(single_strategy("prefix"), backbone, 0.05)
    equal = replace(plan, modules=tuple(replace(m, size=9) for m in plan.modules))
    assert "prefix (length 9 in every layer): peft's PrefixTuningConfig(num_virtual_tokens=9)" in unsupported(equal)


def test_export_of_saved_s4_fails_before_reading_the_backbone(tmp_path):
    backbone = tiny_backbone("bert")  # 'tiny-bert' cannot be loaded by name: the error must come first
    save_trained(PETModel(backbone, compile(s4_design(), backbone, 0.05), 2), None, tmp_path, "sst2")
    with pytest.raises(DesignSpaceError, match="adapter in layer 0"):
        export_peft(tmp_path, tmp_path / "peft")
    assert not (tmp_path / "peft").exists()
