"""Figures of designspace results: ``data`` computes each figure as a plain object (no matplotlib, no
torch; the tested half), ``render`` draws it, ``figures.plot_results`` draws a results folder."""
