"""The README's set-up commands are the ones CI runs, and its CLI examples name real commands."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_ci_runs_the_readme_test_command():
    test_cmd = next(b.strip() for b in _bash_blocks() if "pytest" in b)
    ci_lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_cmd in ci_lines


def test_readme_commands_exist_in_the_cli():
    from blurforge.cli import build_parser as bf_parser
    from deblurdiff.cli import build_parser as dd_parser

    known = {
        "blurforge": set(bf_parser()._subparsers._group_actions[0].choices),
        "deblurdiff": set(dd_parser()._subparsers._group_actions[0].choices),
    }
    for block in _bash_blocks():
        for m in re.finditer(r"\b(blurforge|deblurdiff) ([a-z-]+)", block):
            assert m.group(2) in known[m.group(1)], m.group(0)
