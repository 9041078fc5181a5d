"""Every report of the lab; importing this package registers them all (analysis.registry)."""

from analysis.reports import (augmentations, ba2m, batch_size, collapse, formula, generic, methods, metric, pnda,
                              sensitivity, sweep)

__all__ = ["augmentations", "ba2m", "batch_size", "collapse", "formula", "generic", "methods", "metric", "pnda",
           "sensitivity", "sweep"]
