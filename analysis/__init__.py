"""Figures of designspace results: data functions (tested) and matplotlib renderers."""
