"""PET strategies, one small module each, behind a registry (see ``registry.py``)."""

from . import registry
from .base import PETModule, Strategy

__all__ = ["registry", "PETModule", "Strategy"]
