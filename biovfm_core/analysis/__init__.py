"""Scaling analysis: fits, task properties, correlations, plots and report."""
