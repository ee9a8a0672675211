"""S3PET / S3Delta: differentiable sparse structure search of PET modules under a parameter budget.

``search(backbone, task, budget, SearchConfig(...))`` learns one gate per candidate of the pool
(strategy x role x layer) after a warm-up with every gate open, keeps the expected cost on the
budget and discretises the gates into a structure (a :class:`~designspace.plan.Plan`).
``run.search_record`` runs one search as a trial of the pool; ``run_search_experiment`` runs an
experiment file of searches and the retrainings they imply (searched, random and budget-matched
manual structures, head-only and whole-pool anchors) through the trial store.

Importing this package needs no torch: the searching parts are loaded on first use.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "SearchConfig": "config",
    "SearchExperiment": "experiment",
    "run_search_experiment": "experiment",
    "search_record": "run",
    "search": "search",
    "SearchResult": "search",
    "Gates": "gates",
    "solve_shift": "gates",
    "DEFAULT_SPACE": "structure",
    "MANUAL": "structure",
    "candidate_specs": "structure",
    "structure_plan": "structure",
    "random_structure": "structure",
    "manual_structure": "structure",
    "heatmap_data": "structure",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
