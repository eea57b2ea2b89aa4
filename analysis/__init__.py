"""Parquet results -> Pareto fronts, plots, tables and reports (pyarrow/pandas only; no torch, no ray)."""
