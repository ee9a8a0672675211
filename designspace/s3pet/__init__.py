"""S3PET / S3Delta: differentiable sparse structure search of PET modules under a parameter budget.

``search(backbone, SearchConfig(...))`` learns one gate per candidate (strategy x role x layer),
keeps the expected cost on the budget, and discretises the gates into a structure (a
:class:`~designspace.plan.Plan`); ``designspace.train.train_design`` trains that structure (a plan like any other) from a fresh state;
``random_structure`` and ``manual_structure`` give the baselines at the same budget;
``run_search_experiment`` runs a YAML experiment of all of these.
"""

from .experiment import run_search_experiment
from .gates import Gates, solve_shift
from .search import SearchConfig, SearchResult, search
from .structure import (
    DEFAULT_SPACE,
    StructureModel,
    candidate_specs,
    heatmap_data,
    manual_structure,
    plot_heatmap,
    random_structure,
    structure_plan,
)

__all__ = [
    "SearchConfig",
    "SearchResult",
    "search",
    "random_structure",
    "manual_structure",
    "candidate_specs",
    "structure_plan",
    "StructureModel",
    "Gates",
    "solve_shift",
    "heatmap_data",
    "plot_heatmap",
    "DEFAULT_SPACE",
    "run_search_experiment",
]
