"""The report section of a study that ran on several nodes: when each trial ran on which node, and the node
count over time; a one-node study has none."""

import json

import polars as pl

from analysis.figures import trial_timeline
from analysis.html import render_report


def _study(folder, nodes: list[str]):
    folder.mkdir()
    rows = [{"batch_size": 32 * (i + 1), "status": "ok" if i != 2 else "failed: DatasetError: on node b", "node": n,
             "started_at": 1000.0 + 60 * i, "ended_at": 1000.0 + 60 * i + 90} for i, n in enumerate(nodes)]
    pl.DataFrame(rows).write_parquet(folder / "results.parquet")
    (folder / "study.json").write_text(json.dumps({"name": "s", "axes": ["batch_size"]}))
    records = [{"t": 995.0 + 5 * k, "nodes": [{"node": "head"}] + [{"node": n} for n in nodes[:min(k, len(nodes))]]}
               for k in range(60)]
    (folder / "nodes.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    return folder


def test_a_study_on_several_nodes_shows_its_trials_on_their_nodes_and_the_node_count(tmp_path):
    study = _study(tmp_path / "two", ["a (10.0.0.1)", "b (10.0.0.2)", "b (10.0.0.2)"])
    page = render_report(study / "report.html", "t", [], []).read_text()
    assert "Where the trials ran" in page
    results = pl.read_parquet(study / "results.parquet")
    records = [json.loads(line) for line in (study / "nodes.jsonl").read_text().splitlines()]
    fig = trial_timeline(results, records, ["batch_size"])
    bars = [t for t in fig.data if t.type == "bar"]
    assert sorted(y for t in bars for y in t.y) == ["a (10.0.0.1)", "b (10.0.0.2)", "b (10.0.0.2)"]
    assert [len(t.y) for t in bars] == [2, 1]  # finished, then the failed trial in its own colour
    assert list(bars[0].base) == [5 / 60, 65 / 60] and list(bars[0].x) == [1.5, 1.5]  # minutes from the first record
    count = next(t for t in fig.data if t.type == "scatter")
    assert max(count.y) == 4 and count.y[0] == 1  # the head, then the nodes as they came


def test_a_study_on_one_node_has_no_placement_section(tmp_path):
    study = _study(tmp_path / "one", ["a (10.0.0.1)"] * 3)
    assert "Where the trials ran" not in render_report(study / "report.html", "t", [], []).read_text()
