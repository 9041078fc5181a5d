"""The reports: every folder any study writes (and a custom study's, and a single run's) redraws through
the one registry, `python -m analysis.report DIR` included; reports are self-contained (plotly.js inline,
no CDN) and render in headless Chromium with no JavaScript error and every plot present."""

import importlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import studies
from analysis.registry import REPORTS, report_for
from analysis.report import write_report
from lab.methods import METHODS
from studies.runner import Part, study_arguments
from tests.fake_results import fake_part, fake_plan

ROOT = Path(__file__).resolve().parents[1]


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _render(browser: str, path: Path, profile: Path) -> str:
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom", path.as_uri()],
        capture_output=True, text=True, timeout=120)
    return result.stdout


def _plan_at_smoke(name: str, out: Path):
    module = importlib.import_module(f"studies.{name}")
    parser = study_arguments("", str(out))
    if hasattr(module, "add_arguments"):
        module.add_arguments(parser)
    return module.plan(parser.parse_args(["--scale", "smoke", "--out", str(out)]))


def test_every_study_script_is_listed_and_has_a_plan():
    scripts = {p.stem for p in (ROOT / "studies").glob("*.py")} - {"__init__", "runner", "collect_runs"}
    assert scripts == set(studies.STUDIES)
    for name in studies.STUDIES:
        assert callable(importlib.import_module(f"studies.{name}").plan), name


@pytest.mark.parametrize("name", studies.STUDIES)
def test_every_folder_a_study_writes_redraws(name, tmp_path):
    out = tmp_path / name
    folders = fake_plan(out, _plan_at_smoke(name, out))
    for folder in folders:
        page = write_report(folder)
        html = page.read_text()
        assert page == folder / "report.html" and "<h1>" in html
        assert not re.search(r"<script[^>]+src=[\"']https?://", html), "no scripts from a CDN"
    # the command line redraws the top folder and prints its table
    cli = subprocess.run([sys.executable, "-m", "analysis.report", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert cli.returncode == 0 and cli.stdout.strip().endswith("report.html"), cli.stderr
    table = subprocess.run([sys.executable, "-m", "analysis.report", str(out), "--markdown"], cwd=ROOT,
                           capture_output=True, text=True)
    assert table.returncode == 0 and table.stdout.startswith("| "), table.stderr


def test_a_custom_study_and_a_single_run_get_the_generic_reports(tmp_path):
    part = Part("my_temperature_sweep", dict(scale="smoke", method="moco"),
                {"temperature": [0.05, 0.2, 0.5], "moco_queue_size": [1024, 4096], "seed": [0, 1]})
    fake_part(tmp_path / "custom", part)
    assert report_for(tmp_path / "custom").name == "generic"
    html = write_report(tmp_path / "custom").read_text()
    assert "Accuracy vs temperature" in html and "Accuracy vs moco_queue_size" in html
    assert "moco temperature=0.05 moco_queue_size=1024 seed 0" in html  # legends name the swept knobs
    run = fake_plan(tmp_path / "formula", _plan_at_smoke("formula_pretraining", tmp_path / "formula"))[1]
    assert report_for(run).name == "run" and "Run simclr" in write_report(run).read_text() or \
        "Scores on the test split" in write_report(run).read_text()
    with pytest.raises(Exception, match="neither a study"):
        report_for(tmp_path / "nothing")
    missing = subprocess.run([sys.executable, "-m", "analysis.report", str(tmp_path)], cwd=ROOT,
                             capture_output=True, text=True)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "error:" in missing.stderr


def test_the_registry_names_the_studies_each_report_draws_and_the_palette_covers_every_method():
    from analysis.figures import PALETTE

    assert {"batch_size", "methods", "collapse", "ba2m", "pnda_table", "rais_lambda_margin", "vat_epsilon",
            "formula_pretraining", "generic", "run"} <= set(REPORTS)
    assert set(METHODS) <= set(PALETTE), sorted(set(METHODS) - set(PALETTE))
    assert len(set(PALETTE.values())) == len(PALETTE)  # one colour each


def test_batch_size_report_is_self_contained_and_renders_in_headless_chromium(tmp_path):
    out = tmp_path / "batch_size"
    fake_plan(out, _plan_at_smoke("batch_size", out))
    page = write_report(out)
    html = page.read_text()
    assert "reference: SimSiam, Chen & He 2021" in html and "reference: SimCLR" in html
    assert html.count("Plotly.newPlot") == 3
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium (bash setup.sh --test installs Debian's chromium)")
    # A plot that throws must surface: inject a deliberate error into a copy and check that the test sees it.
    broken = tmp_path / "broken.html"
    broken.write_text(html.replace("</body>", "<script>undefinedFunction()</script></body>"))
    rendered = _render(browser, page, tmp_path / "profile")
    errors = re.search(r"<div id=\"js-errors\"[^>]*>(.*?)</div>", rendered, re.S)
    assert errors is not None and errors.group(1).strip() == "", errors.group(1) if errors else rendered[:500]
    assert rendered.count('class="main-svg"') >= 3 * 2, "every figure must be drawn (plotly adds main-svg layers)"
    assert rendered.count("js-plotly-plot") >= 3
    assert "JS error: " in _render(browser, broken, tmp_path / "profile")


@pytest.mark.parametrize("name", ["methods", "collapse", "pnda_table", "rais_lambda_margin", "vat_epsilon", "ba2m",
                                  "formula_pretraining"])
def test_study_reports_render_in_headless_chromium(name, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium (bash setup.sh --test installs Debian's chromium)")
    out = tmp_path / name
    fake_plan(out, _plan_at_smoke(name, out))
    page = write_report(out)
    plots = page.read_text().count("Plotly.newPlot")
    rendered = _render(browser, page, tmp_path / "profile")
    errors = re.search(r"<div id=\"js-errors\"[^>]*>(.*?)</div>", rendered, re.S)
    assert errors is not None and errors.group(1).strip() == "", (name, errors.group(1) if errors else rendered[:300])
    assert plots >= 1 and rendered.count("js-plotly-plot") >= plots
