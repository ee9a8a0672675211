"""PET strategies, one small module each, behind a registry (see ``registry.py``). No torch at import."""

from . import registry
from .base import Strategy

__all__ = ["registry", "Strategy"]
