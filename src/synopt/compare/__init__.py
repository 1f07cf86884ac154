"""Comparison of routes: sweeps, curve scores, plots, reports."""
