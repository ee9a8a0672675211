"""designspace: explore the design space of parameter-efficient fine-tuning.

Data flows one way: DesignSpace -> Design -> Plan (per backbone and budget) -> attached model ->
brief training -> TrialRecord in a store -> refiner -> narrower DesignSpace; plots read the store.

Importing the package is cheap (no torch): the names that need torch load on first use.
"""

from __future__ import annotations

import importlib

from .errors import DesignSpaceError
from .experiment import Experiment
from .plan import DEFAULT_BUDGET, Plan, compile_plan
from .presets import PRESETS
from .regime import Regime
from .space import Design, DesignSpace
from .store import TrialStore
from .trial import Status, TrialRecord, TrialSpec

__version__ = "0.2.0"

# name -> module: the workflow's torch-side functions, imported on first access (PEP 562).
_LAZY = {
    "load_backbone": "designspace.backbones",
    "backbone_info": "designspace.backbones",
    "train_design": "designspace.train",
    "Refiner": "designspace.refine",
    "to_peft": "designspace.export",
    "save_trained": "designspace.io",
    "load_trained": "designspace.io",
    "apply_design": "designspace.apply",
    "load_design": "designspace.files",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'designspace' has no attribute {name!r}")


__all__ = [
    "load_backbone",
    "backbone_info",
    "DesignSpace",
    "Design",
    "PRESETS",
    "compile_plan",
    "Plan",
    "DEFAULT_BUDGET",
    "train_design",
    "Regime",
    "Experiment",
    "Refiner",
    "TrialStore",
    "TrialSpec",
    "TrialRecord",
    "Status",
    "to_peft",
    "save_trained",
    "load_trained",
    "apply_design",
    "load_design",
    "DesignSpaceError",
]
