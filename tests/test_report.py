"""The report: drawn from a results file in the lab's schema, rendered by headless Chromium,
with no JavaScript error and every plot present; no CDN, plotly.js inline."""

import re
import shutil
import subprocess
from pathlib import Path

import polars as pl
import pytest

from analysis.report import write_batch_size_report, write_methods_report
from lab.results import RESULT_COLUMNS, result_row


def _fake_study(folder: Path) -> None:
    rows, history = [], []
    for method in ("simclr", "simsiam"):
        for batch in (32, 128, 512):
            for seed in (0, 1):
                metrics = {"method": method, "batch_size": batch, "seed": seed, "scale": "smoke",
                           "dataset": "fashion_mnist", "backbone": "convnet_tiny", "epochs": 2, "knn_k": 200,
                           "knn_temperature": 0.1, "knn_top1": 70 + seed + batch / 100, "linear_top1": 75.0,
                           "random_knn_top1": 60.0, "random_linear_top1": 65.0, "status": "ok", "wall_s": 5.0}
                row = result_row(metrics, trial_id=f"{method}-{batch}-{seed}")
                rows.append(row)
                history += [{"trial_id": row["trial_id"], "method": method, "batch_size": batch, "seed": seed,
                             "epoch": e, "loss": 1.0 / e, "monitor_knn_top1": 60.0 + e,
                             "embedding_std": 0.1} for e in (1, 2)]
    pl.DataFrame(rows, schema=RESULT_COLUMNS, strict=False).write_parquet(folder / "results.parquet")
    pl.DataFrame(history).write_parquet(folder / "history.parquet")


def test_report_is_self_contained(tmp_path):
    _fake_study(tmp_path)
    html = write_batch_size_report(tmp_path).read_text()
    assert "reference: SimSiam, Chen & He 2021" in html and "reference: SimCLR" in html
    assert not re.search(r"<script[^>]+src=[\"']https?://", html), "the report must not load scripts from a CDN"
    assert html.count("Plotly.newPlot") == 3


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_report_renders_in_headless_chromium(tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium (bash setup.sh --test installs Debian's chromium)")
    _fake_study(tmp_path)
    page = write_batch_size_report(tmp_path)
    # A plot that throws must surface: inject a deliberate error into a copy and check that the test sees it.
    broken = tmp_path / "broken.html"
    broken.write_text(page.read_text().replace("</body>", "<script>undefinedFunction()</script></body>"))

    def dom(path: Path) -> str:
        result = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
             path.as_uri()], capture_output=True, text=True, timeout=120)
        return result.stdout

    rendered = dom(page)
    errors = re.search(r"<div id=\"js-errors\"[^>]*>(.*?)</div>", rendered, re.S)
    assert errors is not None and errors.group(1).strip() == "", errors.group(1) if errors else rendered[:500]
    assert rendered.count('class="main-svg"') >= 3 * 2, "every figure must be drawn (plotly adds main-svg layers)"
    assert rendered.count("js-plotly-plot") >= 3
    assert "JS error: " in dom(broken)


def test_methods_report(tmp_path):
    _fake_study(tmp_path)
    html = write_methods_report(tmp_path).read_text()
    assert html.count("Plotly.newPlot") == 2 and "random encoder" in html and "knn_gain" in html


def _render(browser: str, path: Path, profile: Path) -> str:
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom", path.as_uri()],
        capture_output=True, text=True, timeout=120)
    return result.stdout


def _fake_pnda_study(folder: Path) -> None:
    import torch

    from lab.methods.pnda import sample_grid_png

    images = torch.randint(0, 256, (40, 1, 28, 28), dtype=torch.uint8)
    grid = sample_grid_png(images, torch.arange(40) % 5 == 0)
    rows = []
    for mode in ("none", "pda", "nda", "pnda"):
        for margin in (0.1, 0.2):
            for seed in (0, 1):
                metrics = {"method": "pnda", "pnda_mode": mode, "rais_margin": margin, "rais_lambda": 1.0,
                           "seed": seed, "scale": "smoke", "dataset": "fashion_mnist", "backbone": "convnet_tiny",
                           "epochs": 1, "rais_rotation_epochs": 1, "rais_separation_epochs": 1, "batch_size": 64,
                           "queue_size": 512, "linear_top1": 60.0 + seed + margin, "knn_top1": 50.0,
                           "random_linear_top1": 55.0, "status": "ok", "wall_s": 3.0,
                           "rai_positive_ratio": {"pda": 100.0, "nda": 0.0, "pnda": 20.0 * margin}.get(mode),
                           "rai_samples_png": grid if mode == "pnda" else None}
                rows.append(result_row(metrics, trial_id=f"{mode}-{margin}-{seed}"))
    pl.DataFrame(rows, schema=RESULT_COLUMNS, strict=False).write_parquet(folder / "results.parquet")


def test_pnda_reports_show_the_reference_tables_and_the_rai_grids(tmp_path):
    from analysis.pnda_report import write_pnda_table_report, write_rais_report

    _fake_pnda_study(tmp_path)
    for write, plots in ((write_pnda_table_report, 1), (write_rais_report, 1)):
        page = write(tmp_path)
        html = page.read_text()
        assert html.count("Plotly.newPlot") == plots
        assert "reference: CIFAR-100, ResNet-50" in html and "data:image/png;base64," in html
        browser = _chromium()
        if browser is not None:
            rendered = _render(browser, page, tmp_path / "profile")
            errors = re.search(r"<div id=\"js-errors\"[^>]*>(.*?)</div>", rendered, re.S)
            assert errors is not None and errors.group(1).strip() == ""
            assert rendered.count("js-plotly-plot") >= plots


def test_vat_report_shows_recall_on_both_layers_beside_the_reference(tmp_path):
    from analysis.metric_report import write_vat_report

    rows = []
    for epsilon in (0.0, 0.25, 1.0):
        for seed in (0, 1):
            recalls = {f"{layer}recall_at_{k}": 40.0 + 5 * k + epsilon + seed + (3.0 if layer else 0.0)
                       for layer in ("", "fc_") for k in (1, 2, 4, 8)}
            metrics = {"method": "metric", "metric_loss": "npair", "npair_form": "distance", "vat_epsilon": epsilon,
                       "vat_lambda": 1.0, "seed": seed, "scale": "smoke", "dataset": "fashion_mnist",
                       "backbone": "convnet_tiny", "epochs": 1, "batch_size": 10, "status": "ok", "wall_s": 2.0,
                       "random_recall_at_1": 30.0, "random_fc_recall_at_1": 29.0, **recalls}
            rows.append(result_row(metrics, trial_id=f"{epsilon}-{seed}"))
    pl.DataFrame(rows, schema=RESULT_COLUMNS, strict=False).write_parquet(tmp_path / "results.parquet")
    page = write_vat_report(tmp_path)
    html = page.read_text()
    assert html.count("Plotly.newPlot") == 1
    assert "embedding layer (fc), with VAT" in html and "encoder features, with VAT" in html
    assert "reference: CUB-200-2011" in html and "reference: Cars196" in html
    assert "fc_recall_at_1_mean" in html  # the summary table
