"""One study per knob a paper highlights; each script declares its plan (studies.runner.Plan)."""

# The study scripts (studies/<name>.py, each with `plan(args)` and `main`); tests/test_report.py draws every
# folder each of them writes.
STUDIES = ("batch_size", "methods", "collapse", "ba2m", "pnda_table", "rais_lambda_margin", "vat_epsilon",
           "formula_pretraining", "temperature", "momentum", "negatives", "projection_head", "swav_prototypes",
           "dino_teacher_temperature", "barlow_lambda", "vicreg_coefficients", "batch_robustness", "batch_epochs",
           "augmentations")

# Commands that are studies of the user's choosing, not of a fixed knob: `python -m studies.sweep`.
COMMANDS = ("sweep",)
