"""Shared fixtures: the MiniLM-L6 layer map on the meta device, and single-threaded torch."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def minilm():
    """MiniLM-L6's layers and parameter count, no weights (built once per session)."""
    from designspace.backbones import backbone_info

    return backbone_info("minilm-l6")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine the thread
    pool's spinning made the strategy matrix ~15x slower in CPU time."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> str:
    """A 4-layer, 32-wide random BERT next to MiniLM's tokenizer: load_backbone(path) works unchanged."""
    import shutil
    from pathlib import Path

    import torch
    import transformers

    from designspace.backbones.offline import resolve_backbone_path

    folder = tmp_path_factory.mktemp("tiny-bert")
    source = Path(resolve_backbone_path("minilm-l6"))
    for name in ("special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copy(source / name, folder / name)
    config = transformers.BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=48
    )
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def glue_root():
    """The real GLUE folder. Missing locally: the real-data tests skip; missing in CI: they fail,
    so a green CI run always means the readers and trainers ran on the real files."""
    import os

    from designspace.tasks import resolve_data_dir

    d = resolve_data_dir()
    if not all((d / t / "train.tsv").is_file() for t in ("SST-2", "CoLA", "MRPC", "RTE", "STS-B")):
        message = f"GLUE data not found at {d}; set DESIGNSPACE_GLUE_DIR"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return d
