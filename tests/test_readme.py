"""README's Quick start: one bash block of exactly two command lines; .ci/run runs the second."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quick_start_lines() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_quick_start_is_two_commands_and_ci_runs_the_second():
    lines = quick_start_lines()
    assert len(lines) == 2, lines
    assert "studies/batch_size.py" in lines[0] and "pytest" in lines[1]
    ci = [line for line in (ROOT / ".ci/run").read_text().splitlines() if line and not line.startswith(("#", "set ", "cd "))]
    assert ci == [lines[1]]
    text = (ROOT / "README.md").read_text()
    assert text.split("\n## ")[1].startswith("Quick start"), "Quick start must be the README's first section"
