"""Stored results in, figures out: polars over the parquet files, plotly figures, offline HTML reports.

Imports neither torch nor ray (tests/test_layering.py).
"""
