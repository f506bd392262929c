"""Figures: the only place that imports matplotlib (one module per concept)."""
