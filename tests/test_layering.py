"""The layers: lab imports none of studies/analysis/cluster; analysis imports neither torch nor ray; no
import cycles in lab/ or analysis/ (function-local imports included); error types in their own module."""

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


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _is_script_entry(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"
            and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators))


def _edges(package: str) -> dict[str, set[str]]:
    """module -> the modules of `package` it imports anywhere (functions included), not under TYPE_CHECKING and
    not in its `if __name__ == "__main__"` script entry. `from pkg import name` imports pkg.name when that is a
    module, else pkg (its __init__)."""
    modules = {_module_name(p): p for p in (ROOT / package).rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}

    def visit(module: str, node: ast.AST) -> None:
        if isinstance(node, ast.If) and (_is_type_checking(node) or _is_script_entry(node)):
            for child in node.orelse:
                visit(module, child)
            return
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                       for a in node.names]
        for target in targets:
            if target in modules and target != module:
                graph[module].add(target)
        for child in ast.iter_child_nodes(node):
            visit(module, child)

    for module, path in modules.items():
        visit(module, ast.parse(path.read_text()))
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles, state, stack = [], {}, []

    def walk(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                walk(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            walk(node)
    return cycles


def test_no_import_cycles_in_lab_or_analysis():
    for package in ("lab", "analysis"):
        cycles = _cycles(_edges(package))
        assert not cycles, f"{package}: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_cycle_check_would_see_one():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_error_types_live_in_their_own_module_and_nowhere_else():
    defined = {}
    for path in (ROOT / "lab").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Error"):
                defined[node.name] = path.relative_to(ROOT).as_posix()
    assert defined and set(defined.values()) == {"lab/errors.py"}, defined


def test_layout():
    for path in ("lab/data", "lab/methods", "lab/views.py", "lab/backbones.py", "lab/heads.py", "lab/train.py",
                 "lab/evaluate.py", "lab/ray_train.py", "lab/errors.py", "lab/knobs.py", "lab/config.py",
                 "lab/protocol.py", "lab/results.py", "lab/splits.py", "lab/cli.py", "studies/batch_size.py",
                 "analysis/report.py", "analysis/registry.py", "analysis/html.py", "cluster/cluster.yaml",
                 "pyproject.toml", "bench/throughput.py"):
        assert (ROOT / path).exists(), path
