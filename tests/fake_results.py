"""Study and run folders with the layout the lab writes and made-up scores: what the report tests draw.

A part's rows come from the study's own declarations (studies.runner.check_space over its fixed knobs
and space, each cell a RunConfig row), its study.json from studies.runner.describe_study, a run's
result.json from the results schema: only the scores are invented.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import polars as pl

from lab.config import RunConfig
from lab.results import history_rows, result_row, results_frame
from studies.runner import Part, Plan, check_space, describe_study, write_parent


def _scores(cfg: RunConfig, index: int) -> dict:
    base = 60.0 + (index % 7) + 0.5 * cfg.seed
    scores = {"knn_top1": base, "linear_top1": base + 4, "random_knn_top1": 55.0, "random_linear_top1": 58.0,
              "status": "ok", "wall_s": 3.0 + index, "epochs_done": cfg.epochs, "final_loss": 1.0 / (1 + index),
              "embedding_std": 0.05, "embedding_std_ratio": 0.9, "collapsed": index % 5 == 4,
              "collapse_reason": "embedding std x sqrt(d) = 0.050 < 0.1" if index % 5 == 4 else "",
              "chance_top1": 10.0}
    if cfg.method == "supervised":
        scores.update(classifier_top1=base + 10, random_classifier_top1=10.0)
    if cfg.method == "contrastive_clustering":
        scores.update(cluster_nmi=0.5, cluster_acc=0.6, cluster_ari=0.4, random_cluster_nmi=0.02)
    if cfg.class_split == "half":
        scores.update({f"{p}{layer}recall_at_{k}": 40.0 + 5 * k + (3.0 if layer else 0.0) - (10.0 if p else 0.0)
                       for p in ("", "random_") for layer in ("", "fc_") for k in (1, 2, 4, 8)})
    if cfg.method == "pnda" and cfg.pnda_mode != "none":
        import torch

        from lab.methods.pnda import sample_grid_png

        # as the lab marks them: +PDA every image a positive (100 %), +NDA none (0 %), +PNDA those RAIS selects
        mask = {"pda": torch.ones(40, dtype=torch.bool), "nda": torch.zeros(40, dtype=torch.bool)}.get(
            cfg.pnda_mode, torch.arange(40) % 5 == 0)
        scores.update(rai_positive_ratio=100.0 * mask.float().mean().item(),
                      rai_samples_png=sample_grid_png(torch.randint(0, 256, (40, 1, 28, 28), dtype=torch.uint8), mask))
    if cfg.method == "pnda" and cfg.pnda_mode == "pda":
        scores.update(random_linear_top1=scores["linear_top1"] + 6)  # a random encoder above every trained one
    return scores


def _history(cfg: RunConfig) -> list[dict]:
    share = {"none": None, "pda": 1.0, "nda": 0.0}.get(cfg.pnda_mode, 0.2) if cfg.method == "pnda" else None
    # (MoCo v2 alone, pnda_mode none, logs no share of rotated positives)
    logs = {"dino": {"teacher_entropy_ratio": 0.5, "teacher_mean_entropy_ratio": 0.7, "teacher_student_kl": 1.0},
            "supervised": {"train_top1": 50.0, "ba2m_weight_std": 0.1},
            "pnda": {} if share is None else {"rotation_positive_in_batch": share}}
    return [{"epoch": e, "loss": 2.0 / e, "embedding_std": 0.05, "monitor_knn_top1": 50.0 + e, "embedding_dim": 32,
             **logs.get(cfg.method, {})} for e in range(1, cfg.epochs + 1)]


def fake_part(folder: Path, part: Part) -> None:
    """results.parquet, history.parquet and study.json of one study part, one row per grid cell."""
    folder.mkdir(parents=True, exist_ok=True)
    rows, histories = [], []
    axes = describe_study(part.name, part.fixed, part.space, part.report)["axes"]
    for index, cell in enumerate(check_space(part.fixed, part.space)):
        cfg = RunConfig.from_dict({**part.fixed, **cell})
        history = _history(cfg)
        row = result_row({**cfg.to_row(), **_scores(cfg, index), "fingerprint": cfg.fingerprint()},
                         trial_id=f"trial_{index:03d}")
        rows.append(row)
        histories += history_rows(row, history, axes)
    results_frame(rows).write_parquet(folder / "results.parquet")
    pl.DataFrame(histories, infer_schema_length=None).write_parquet(folder / "history.parquet")
    description = describe_study(part.name, part.fixed, part.space, part.report)
    (folder / "study.json").write_text(json.dumps({**description, "trials": len(rows)}))


def fake_run(folder: Path, knobs: dict) -> None:
    """A finished `python -m lab.train` folder: result.json (and a checkpoint file, as init_from wants one)."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = RunConfig.from_dict(knobs)
    row = {**cfg.to_row(), **_scores(cfg, 0), "fingerprint": cfg.fingerprint(), "history": _history(cfg)}
    row = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
    (folder / "result.json").write_text(json.dumps(row, default=str))
    (folder / "checkpoint.pt").write_bytes(b"")


def fake_plan(out: Path, plan: Plan) -> list[Path]:
    """Every folder a plan writes, faked; returns them: the parent (if any), the parts, the single runs."""
    folders = []
    if plan.is_parent:
        write_parent(out, plan.name, report=plan.report or plan.name, parts=[p.folder for p in plan.parts],
                     runs=list(plan.runs), **plan.layout)
        folders.append(out)
    for folder, knobs in plan.runs.items():
        fake_run(out / folder, knobs)
        folders.append(out / folder)
    for part in plan.parts:
        fake_part(out / part.folder, part)
        if part.folder:
            folders.append(out / part.folder)
        elif out not in folders:
            folders.append(out)
    return folders
