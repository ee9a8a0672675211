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
