"""designspace: explore the design space of parameter-efficient fine-tuning.

Data flows one way: DesignSpace -> Design -> Plan (per backbone and budget) -> attached model ->
brief training -> Trial rows in a store -> refiner -> narrower DesignSpace; plots read the store.
"""

from .errors import DesignSpaceError
from .plan import Plan, compile
from .space import PRESETS, Design, DesignSpace, group_sizes, load_design

__version__ = "0.1.0"
__all__ = ["Design", "DesignSpace", "Plan", "compile", "group_sizes", "load_design", "PRESETS", "DesignSpaceError"]
