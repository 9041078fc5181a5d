"""lab imports none of studies/analysis/cluster; analysis imports neither torch nor ray."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(folder: str) -> set[str]:
    names = set()
    for path in (ROOT / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


def test_lab_does_not_import_the_layers_above_it():
    assert not _imports("lab") & {"studies", "analysis", "cluster"}


def test_analysis_needs_neither_torch_nor_ray():
    assert not _imports("analysis") & {"torch", "ray", "lab", "torchvision"}
    code = ("import sys, analysis.report, analysis.figures, analysis.load; "
            "bad = [m for m in ('torch', 'ray') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_layout():
    for path in ("lab/data", "lab/methods", "lab/views.py", "lab/backbones.py", "lab/heads.py", "lab/train.py",
                 "lab/evaluate.py", "lab/ray_train.py", "studies/batch_size.py", "analysis/report.py",
                 "cluster/cluster.yaml", "pyproject.toml", "bench/throughput.py"):
        assert (ROOT / path).exists(), path
