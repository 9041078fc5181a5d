"""Every report of the lab; importing this package registers them all (analysis.registry)."""

from analysis.reports import ba2m, batch_size, collapse, formula, generic, methods, metric, pnda, sweep

__all__ = ["ba2m", "batch_size", "collapse", "formula", "generic", "methods", "metric", "pnda", "sweep"]
