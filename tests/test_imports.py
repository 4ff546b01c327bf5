"""Every ``mpcformer`` module named in an import statement exists, including imports inside functions
(most of the package imports lazily, so a moved module would otherwise fail only when that code runs)."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [*(ROOT / "platform" / "mpcformer").rglob("*.py"), *(ROOT / "actors").rglob("*.py"),
           *(ROOT / "jobs").rglob("*.py"), *(ROOT / "tests").glob("*.py"), *(ROOT / "benchmarks").glob("*.py")]


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import of an ``mpcformer`` module in ``path`` (for ``from X
    import y``: X)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("mpcformer")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("mpcformer"):
            found.append((node.lineno, node.module))
    return found


def test_every_imported_mpcformer_module_exists():
    missing = [f"{path.relative_to(ROOT)}:{line}: {module}"
               for path in SOURCES for line, module in imported_modules(path)
               if importlib.util.find_spec(module) is None]
    assert not missing, "imports of modules that do not exist:\n" + "\n".join(missing)


def test_a_stale_import_is_caught(tmp_path):
    stale = tmp_path / "stale.py"
    stale.write_text("def f():\n    from mpcformer.cluster.no_such_module import thing\n")
    [(line, module)] = imported_modules(stale)
    assert line == 2 and importlib.util.find_spec(module) is None
