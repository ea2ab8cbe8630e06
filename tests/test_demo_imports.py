"""The demos depend one way: each CLI imports its demo, no demo imports its CLI (whose parser
would otherwise be built to run a demo step, and whose import of the demo would be a cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at top level or inside functions, as dotted names;
    ``from pkg import name`` counts as both ``pkg`` and ``pkg.name`` (name may be a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return found


def test_imported_modules_sees_every_import_form(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("import a.b\nfrom c import d\ndef f():\n    from e.f import g\n    import h as i\n")
    assert imported_modules(src) == {"a.b", "c", "c.d", "e.f", "e.f.g", "h"}


@pytest.mark.parametrize("package", ["deblurdiff", "blurforge"])
def test_the_demo_does_not_import_its_cli(package):
    demo, cli = ROOT / package / "demo.py", f"{package}.cli"
    assert f"{package}.demo" in imported_modules(ROOT / package / "cli.py")  # the CLI runs the demo
    bad = sorted(m for m in imported_modules(demo) if m == cli or m.startswith(cli + "."))
    assert not bad, f"{package}/demo.py imports {bad}: the demo must call the commands, not the CLI"
