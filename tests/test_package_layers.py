"""The packages form a one-way stack: a lower package never imports a higher one (function-level imports
included), so each can be read, tested and changed without the ones above it."""

import ast
import importlib
import pkgutil
from pathlib import Path

import colossal_hammer

PACKAGE = Path(colossal_hammer.__file__).parent
# bottom to top; packages on one level may import each other
LAYERS = [
    {"errors", "quiet", "hostfile", "digest", "rules", "compat"},  # shared kit, constants and rules
    {"data", "tokenizer", "model"},
    {"adapters", "moe"},
    {"eval"},
    {"training"},
    {"plan", "serve", "demo"},
    {"entry"},  # console entry points
]
LEVEL = {name: level for level, names in enumerate(LAYERS) for name in names}


def imported_packages(path: Path, root: Path = PACKAGE):
    """(top-level package imported, line) for every import of colossal_hammer in the file under root."""
    module = path.relative_to(root).with_suffix("").parts
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            here = list(module[:-1])  # the package the module is in
            base = here[: len(here) - (node.level - 1)]
            parts = base + (node.module.split(".") if node.module else [])
            names = parts[:1] or [alias.name for alias in node.names]
            yield from ((name, node.lineno) for name in names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("colossal_hammer."):
            yield node.module.split(".")[1], node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("colossal_hammer."):
                    yield alias.name.split(".")[1], node.lineno


def test_no_package_imports_one_above_it():
    files = sorted(PACKAGE.rglob("*.py"))
    unplaced = sorted({f.relative_to(PACKAGE).with_suffix("").parts[0] for f in files} - set(LEVEL) - {"__init__"})
    assert not unplaced, f"place these in LAYERS: {unplaced}"
    upward = []
    for path in files:
        top = path.relative_to(PACKAGE).with_suffix("").parts[0]
        if top == "__init__":
            continue
        for target, line in imported_packages(path):
            if target in LEVEL and LEVEL[target] > LEVEL[top]:
                upward.append(f"{path.relative_to(PACKAGE)}:{line} imports {target}")
    assert not upward, "\n".join(upward)


def test_the_walk_sees_an_upward_import(tmp_path):
    """The check above can fail: a function-level import of training inside data is seen."""
    probe = tmp_path / "colossal_hammer" / "data" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text("def f():\n    from ..training import loop\n    from colossal_hammer.serve import app\n")
    assert list(imported_packages(probe, tmp_path / "colossal_hammer")) == [("training", 2), ("serve", 3)]


def test_every_module_imports():
    for info in pkgutil.walk_packages(colossal_hammer.__path__, "colossal_hammer."):
        if not info.name.endswith("__main__"):  # those run their command
            importlib.import_module(info.name)
