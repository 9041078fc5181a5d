"""The reports: every folder any study writes (and a custom study's, and a single run's) redraws through
the one registry, `python -m analysis.report DIR` included; reports are self-contained (plotly.js inline,
no CDN) and render in headless Chromium with no JavaScript error and every plot present."""

import ast
import importlib
import itertools
import math
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


def _figures(html: str) -> list[str]:
    """Each figure's Plotly.newPlot call (its data and layout JSON), without the inlined plotly.js."""
    return re.findall(r"Plotly\.newPlot\(.*?</script>", html, re.S)


def _plan_at_smoke(name: str, out: Path):
    module = importlib.import_module(f"studies.{name}")
    parser = study_arguments("", str(out))
    if hasattr(module, "add_arguments"):
        module.add_arguments(parser)
    return module.plan(parser.parse_args(["--scale", "smoke", "--out", str(out)]))


def _declares_a_plan(path: Path) -> bool:
    """A study script declares `plan(args)` at module level; the library modules beside them (runner, search,
    space, collect_runs) do not."""
    return any(isinstance(node, ast.FunctionDef) and node.name == "plan" for node in ast.parse(path.read_text()).body)


def test_every_study_script_is_listed_and_has_a_plan():
    scripts = {p.stem for p in (ROOT / "studies").glob("*.py") if _declares_a_plan(p)}
    assert scripts == set(studies.STUDIES) | set(studies.COMMANDS)
    for name in studies.STUDIES:
        assert callable(importlib.import_module(f"studies.{name}").plan), name


@pytest.mark.parametrize("name", studies.STUDIES)
def test_every_study_plan_is_valid_at_every_scale(name, tmp_path):
    """Every cell of every part a valid RunConfig at smoke, cpu and gpu scale (a gpu grid that the lab would
    refuse is found here, not on a cluster)."""
    from lab.knobs import SCALES
    from studies.runner import check_space, trial_shape

    module = importlib.import_module(f"studies.{name}")
    for scale in SCALES:
        parser = study_arguments("", str(tmp_path))
        if hasattr(module, "add_arguments"):
            module.add_arguments(parser)
        plan = module.plan(parser.parse_args(["--scale", scale, "--out", str(tmp_path)]))
        pending = {str((tmp_path / folder).resolve()) for folder in plan.runs}
        for part in plan.parts:
            fixed = {k: (None if isinstance(v, str) and str(Path(v).resolve()) in pending else v)
                     for k, v in part.fixed.items()}
            space = {k: [None if isinstance(v, str) and str(Path(v).resolve()) in pending else v for v in values]
                     if isinstance(values, list) else values for k, values in part.space.items()}
            cells = check_space(fixed, space)
            assert cells, (name, scale, part.name)
            assert trial_shape(fixed, cells)[0] >= 1  # what the runner reads before Ray starts


@pytest.mark.parametrize("name", studies.STUDIES)
def test_every_folder_a_study_writes_redraws(name, tmp_path):
    out = tmp_path / name
    folders = fake_plan(out, _plan_at_smoke(name, out))
    for folder in folders:
        page = write_report(folder)
        html = page.read_text()
        assert page == folder / "report.html" and "<h1>" in html
        assert not re.search(r"<script[^>]+src=[\"']https?://", html), "no scripts from a CDN"
        # smoke plans run one seed: a missing value or the spread of one run prints '–', never nan / None / 0
        assert not re.search(r"<td>(nan|None|NaN)</td>", html), folder
        figures = "".join(_figures(html))
        assert "± 0.00" not in html and '"overlaying"' not in figures, folder  # no twin axis anywhere
        assert not re.search(r'"name":"[^"]*\b(method|seed)=', figures), "legends name method and seed once, plainly"
    # the top folder's table, as `--markdown` prints it (the command line itself: the test below)
    from analysis.html import markdown_table

    table = report_for(out).summary(out)
    assert len(table) and markdown_table(table).startswith("| ")


def test_the_command_line_redraws_a_study_and_prints_its_table(tmp_path):
    """`python -m analysis.report DIR` (one subprocess per call: tried on a parent folder of parts and on a
    one-part study, not on every study, which the in-process redraws above cover)."""
    for name in ("momentum", "temperature"):
        out = tmp_path / name
        fake_plan(out, _plan_at_smoke(name, out))
        _command_line_redraws(out)


def _command_line_redraws(out: Path) -> None:
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


# --- what a reader sees: scales, colours, seeds, and each report's own pitfalls --------------------------------


def _lab(colour: str) -> tuple[float, float, float]:
    """sRGB '#rrggbb' -> CIELAB (D65)."""
    def linear(c: float) -> float:
        return ((c + 0.055) / 1.055) ** 2.4 if c > 0.04045 else c / 12.92

    r, g, b = (linear(int(colour[i:i + 2], 16) / 255) for i in (1, 3, 5))
    x, y, z = ((0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047, 0.2126 * r + 0.7152 * g + 0.0722 * b,
               (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883)
    f = [v ** (1 / 3) if v > 0.008856 else 7.787 * v + 16 / 116 for v in (x, y, z)]
    return 116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])


def test_every_two_methods_colours_differ_visibly_and_legends_say_each_knob_once():
    from analysis.figures import PALETTE, run_label

    colours = {m: _lab(PALETTE[m]) for m in METHODS}
    for a, b in itertools.combinations(METHODS, 2):
        distance = math.dist(colours[a], colours[b])
        assert distance > 25, f"{a} {PALETTE[a]} and {b} {PALETTE[b]} look alike (CIELAB distance {distance:.0f})"
    row = {"method": "barlow_twins", "seed": 0, "batch_size": 64}
    assert run_label(row, ["method", "batch_size", "seed"]) == "barlow_twins batch_size=64 seed 0"


def test_one_seed_has_no_spread_and_tables_print_a_dash_for_a_missing_value():
    import polars as pl

    from analysis.figures import accuracy_vs_knob, point_hover
    from analysis.html import table_html
    from analysis.load import summarise

    # batch 64: two seeds; batch 256: one (its second run failed)
    results = pl.DataFrame({"method": ["simclr"] * 4, "batch_size": [64, 64, 256, 256],
                            "status": ["ok", "ok", "ok", "failed"], "knn_top1": [60.0, 62.0, 63.0, None],
                            "random_knn_top1": [55.0] * 4, "cluster_nmi": [float("nan"), 0.5, 0.7, None]})
    summary = summarise(results, ["batch_size"], ["knn_top1", "cluster_nmi"])
    two, one = summary.row(0, named=True), summary.row(1, named=True)
    assert two["knn_top1_std"] == pytest.approx(2 ** 0.5) and one["knn_top1_std"] is None
    assert two["cluster_nmi_mean"] == pytest.approx(0.5) and two["cluster_nmi_std"] is None  # NaN: no such score
    fig = accuracy_vs_knob(results, "batch_size", metrics=("knn_top1",))
    with_bars = [t for t in fig.data if t.error_y is not None and t.error_y.array is not None]
    # plotly draws a null error as a cap of length 0: only the two-seed point may carry one
    assert [list(t.x) for t in with_bars] == [[64]] and None not in with_bars[0].error_y.array
    assert point_hover([63.0], [None], [1]) == ["63.00 (n = 1, no spread)"]
    cells = re.findall(r"<td>(.*?)</td>", table_html(summary))
    assert "–" in cells and not {"nan", "None", "NaN", "0.00"} & set(cells), cells


def test_references_get_their_own_panel_never_a_twin_axis(tmp_path):
    import polars as pl

    from analysis.figures import accuracy_vs_knob
    from analysis.references import BATCH_SIZE_REFERENCES

    out = tmp_path / "batch_size"
    fake_plan(out, _plan_at_smoke("batch_size", out))
    fig = accuracy_vs_knob(pl.read_parquet(out / "results.parquet"), "batch_size", BATCH_SIZE_REFERENCES)
    reference_axes = {t.yaxis for t in fig.data if (t.name or "").startswith("reference:")}
    lab_axes = {t.yaxis for t in fig.data if not (t.name or "").startswith("reference:")}
    assert reference_axes and lab_axes and not reference_axes & lab_axes
    layout = fig.to_plotly_json()["layout"]
    assert not any("overlaying" in v for k, v in layout.items() if k.startswith("yaxis"))
    (axis,) = reference_axes
    assert "ImageNet" in layout["yaxis" + axis[1:]]["title"]["text"]
    assert all("n = 1" in t.name for t in fig.data if t.name and t.name.endswith("run)"))  # one seed: said...
    assert not any(t.error_y.array for t in fig.data)  # ... not drawn


def test_methods_bars_sort_by_gain_over_random_and_the_axis_starts_near_the_data():
    import polars as pl

    from analysis.figures import methods_bars

    # alphabetical and by score: byol, moco, simclr; by gain over the random encoder: moco (+15), simclr (+8), byol (+2)
    results = pl.DataFrame({"method": ["byol", "moco", "simclr"], "status": ["ok"] * 3,
                            "knn_top1": [70.0, 65.0, 60.0], "random_knn_top1": [68.0, 50.0, 52.0],
                            "linear_top1": [70.0, 65.0, 60.0], "random_linear_top1": [68.0, 50.0, 52.0]})
    fig = methods_bars(results)
    assert list(fig.data[0].x) == ["moco", "simclr", "byol"]
    low, high = fig.layout.yaxis.range
    assert 40 < low < 50 and high > 70  # a few points below the lowest bar, not 0
    assert len(set(fig.data[0].marker.color)) == 3  # each method its own colour


def test_ba2m_draws_the_classifier_score_on_a_categorical_axis(tmp_path):
    out = tmp_path / "ba2m"
    fake_plan(out, _plan_at_smoke("ba2m", out))
    import polars as pl

    from analysis.reports.ba2m import FIGURE_METRICS, RANDOM_LINES
    from analysis.figures import accuracy_vs_knob

    fig = accuracy_vs_knob(pl.read_parquet(out / "results.parquet"), "ba2m_blocks", metrics=FIGURE_METRICS,
                           random=RANDOM_LINES, x_type="category")
    assert fig.layout.xaxis.type == "category" and {x for t in fig.data for x in t.x} == {"0", "2"}
    assert "classifier" in fig.layout.yaxis.title.text  # the README's score, first panel
    first = _figures(write_report(out).read_text())[0]  # the report's accuracy figure, as drawn
    assert "classifier top-1" in first and '"type":"category"' in first


def test_pnda_keeps_every_bar_on_its_axis_and_shows_only_grid_rows_with_images(tmp_path):
    import polars as pl

    from analysis.reports.pnda import grid_rows_with_images, pnda_bars, positive_share

    out = tmp_path / "pnda_table"
    fake_plan(out, _plan_at_smoke("pnda_table", out))
    results = pl.read_parquet(out / "results.parquet")
    fig = pnda_bars(results)
    lab = [v for t in fig.data if t.xaxis == "x" for v in t.y if v is not None]
    low, high = fig.layout.yaxis.range
    assert max(results["random_linear_top1"]) > max(results["linear_top1"])  # the fake's +PDA: random wins
    assert all(low < v < high for v in lab)
    grids = {r["pnda_mode"]: grid_rows_with_images(r["rai_samples_png"]) for r in results.iter_rows(named=True)
             if r["rai_samples_png"]}
    assert grids["pda"] == [True, True, False, False] and grids["nda"] == [False, False, True, True]
    html = write_report(out).read_text()
    assert "No image selected as rotation-agnostic (0 % RAI)" in html
    assert "Every image selected as rotation-agnostic (100 % RAI)" in html
    assert "The random encoder scores at least the trained one for: +PDA" in html
    history = pl.read_parquet(out / "history.parquet")
    assert "pnda_mode" in positive_share(history.drop("pnda_mode", strict=False), results).columns


def test_collapse_cites_functions_that_exist_and_always_shows_the_default(tmp_path):
    for path in (ROOT / "analysis").rglob("*.py"):
        for name in set(re.findall(r"\blab(?:\.[A-Za-z_]\w*)+", path.read_text())):
            parts = name.split(".")
            for cut in range(len(parts), 0, -1):  # the longest importable prefix, then attributes
                try:
                    target = importlib.import_module(".".join(parts[:cut]))
                    break
                except ImportError:
                    continue
            for attribute in parts[cut:]:
                assert hasattr(target, attribute), f"{path.name} cites {name}, which does not exist"
                target = getattr(target, attribute)
    out = tmp_path / "collapse"
    fake_plan(out, _plan_at_smoke("collapse", out))
    assert "simsiam: default (seed 0)" in write_report(out).read_text()  # the study's own default runs
    for default in out.glob("*_default"):  # as with --no-defaults, or a folder written before defaults were run
        shutil.rmtree(default)
    html = write_report(out).read_text()
    assert "No default run of byol, dino, moco, simsiam" in html and "simsiam: no default run" in html
    fake_plan(tmp_path / "methods", _plan_at_smoke("methods", tmp_path / "methods"))  # results/methods beside it
    html = write_report(out).read_text()
    assert "simsiam: default (seed 0)" in html and "No default run" not in html


def test_generic_and_run_reports_render_in_headless_chromium(tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium (bash setup.sh --test installs Debian's chromium)")
    part = Part("one_seed_sweep", dict(scale="smoke", method="simclr"), {"temperature": [0.1, 0.5], "seed": [0]})
    fake_part(tmp_path / "custom", part)
    run = fake_plan(tmp_path / "formula", _plan_at_smoke("formula_pretraining", tmp_path / "formula"))[1]
    for page in (write_report(tmp_path / "custom"), write_report(run)):
        plots = page.read_text().count("Plotly.newPlot")
        rendered = _render(browser, page, tmp_path / "profile")
        errors = re.search(r"<div id=\"js-errors\"[^>]*>(.*?)</div>", rendered, re.S)
        assert errors is not None and errors.group(1).strip() == "", errors.group(1) if errors else rendered[:300]
        assert plots >= 1 and rendered.count("js-plotly-plot") >= plots


def test_tables_print_a_knobs_value_as_given_and_scores_to_their_digits():
    """A temperature of 0.05 read as 0.1 in a one-digit table (the README's) would misreport the study."""
    import polars as pl

    from analysis.html import markdown_table, table_html

    frame = pl.DataFrame({"temperature": [0.05, 0.0051], "knn_top1_mean": [76.5612, 75.04], "runs": [1, 2]})
    markdown = markdown_table(frame)
    assert "| 0.05 | 76.6 | 1 |" in markdown and "| 0.0051 | 75.0 | 2 |" in markdown
    assert "<td>0.05</td><td>76.56</td>" in table_html(frame)


def test_the_precision_comparison_sets_bf16_beside_fp32_per_method(tmp_path):
    """Two folders of the methods study, one per --precision: per method the means and stds over seeds, bf16
    minus fp32 and the time ratio, worked by hand; a run that did not finish is left out."""
    import polars as pl

    from analysis.reports.methods import precision_comparison

    def folder(name: str, precision: str, knn: list[float], wall: float) -> Path:
        rows = [{"method": "simclr", "seed": seed, "precision_used": precision, "status": "ok", "knn_top1": score,
                 "linear_top1": score + 5, "wall_s": wall} for seed, score in enumerate(knn)]
        rows.append({"method": "simclr", "seed": 9, "precision_used": precision, "status": "diverged: loss nan",
                     "knn_top1": 0.0, "linear_top1": 0.0, "wall_s": 1.0})
        (tmp_path / name).mkdir()
        pl.DataFrame(rows).write_parquet(tmp_path / name / "results.parquet")
        return tmp_path / name

    table = precision_comparison(folder("fp32", "fp32", [70.0, 72.0], 200.0), folder("bf16", "bf16", [71.0, 71.5],
                                                                                     120.0))
    row = table.row(0, named=True)
    assert row["method"] == "simclr" and row["seeds"] == 2
    assert row["knn_top1_fp32"] == 71.0 and row["knn_top1_bf16"] == 71.25
    assert row["knn_top1_std_fp32"] == pytest.approx(2 ** 0.5) and row["knn_top1_std_bf16"] == pytest.approx(0.5 ** 1.5)
    assert row["knn_top1_bf16_minus_fp32"] == 0.25 and row["linear_top1_bf16_minus_fp32"] == 0.25
    assert row["bf16_wall_over_fp32"] == pytest.approx(0.6)
