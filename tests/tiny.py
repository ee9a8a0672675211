"""Tiny randomly initialised models of each family: built in code, seconds, no files."""

from __future__ import annotations

import torch
import transformers as T

from designspace.backbones import Backbone

FAMILIES = ("bert", "roberta", "t5", "gpt2", "llama", "mpnet")


def tiny_config(family: str, n_layers: int = 4):
    if family == "bert":
        return T.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=n_layers, num_attention_heads=4, intermediate_size=48)
    if family == "roberta":
        return T.RobertaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=n_layers, num_attention_heads=4, intermediate_size=48, pad_token_id=1)
    if family == "t5":
        return T.T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=n_layers // 2, num_heads=4, decoder_start_token_id=0)
    if family == "gpt2":
        return T.GPT2Config(vocab_size=64, n_embd=32, n_layer=n_layers, n_head=4, bos_token_id=0, eos_token_id=0)
    if family == "llama":
        return T.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=2)
    if family == "mpnet":  # computes attention itself: prefixes take their own path (strategies.prefix)
        return T.MPNetConfig(vocab_size=64, hidden_size=32, num_hidden_layers=n_layers, num_attention_heads=4, intermediate_size=48)
    raise ValueError(family)


def tiny_backbone(family: str, n_layers: int = 4, seed: int = 0) -> Backbone:
    torch.manual_seed(seed)
    model = T.AutoModel.from_config(tiny_config(family, n_layers))
    model.eval()
    return Backbone.from_model(model, name=f"tiny-{family}")


def tiny_batch(batch: int = 3, seq: int = 7, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 64, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[0, -2:] = 0  # one padded row, so masks are exercised
    return ids, mask
