"""The worker pool: trial specs in, records in the store out (see ``driver.py``)."""

from .driver import evaluate
from .engines import BACKENDS
from .scorer import Scorer, SyntheticScorer, TrainScorer

__all__ = ["evaluate", "BACKENDS", "Scorer", "SyntheticScorer", "TrainScorer"]
