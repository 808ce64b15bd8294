"""The package as a house: layers without cycles, no private names used across modules, short functions.

These read the source (no import needed), so they also hold for modules the other tests never load.
"""

import ast
import re
from pathlib import Path

import rlhf_lab

PACKAGE = Path(rlhf_lab.__file__).parent
MODULES = {path.stem: ast.parse(path.read_text(encoding="utf-8")) for path in sorted(PACKAGE.glob("*.py"))}
MAX_FUNCTION_LINES = 60


def imported_modules(tree: ast.Module) -> dict[str, set[str]]:
    """rlhf_lab modules this module imports (anywhere, also inside functions) -> the names it takes."""
    found: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rlhf_lab"):
            if node.module == "rlhf_lab":  # from rlhf_lab import data, world
                for alias in node.names:
                    found.setdefault(alias.name, set())
            else:
                found.setdefault(node.module.split(".")[1], set()).update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("rlhf_lab."):
                    found.setdefault(alias.name.split(".")[1], set())
    return found


def test_no_import_cycles():
    graph = {name: set(imported_modules(tree)) - {"__version__", name} for name, tree in MODULES.items()}
    visiting, done = set(), set()

    def visit(module: str, path: list[str]) -> None:
        if module in done or module not in graph:
            return
        assert module not in visiting, "import cycle: " + " -> ".join(path + [module])
        visiting.add(module)
        for imported in graph[module]:
            visit(imported, path + [module])
        visiting.discard(module)
        done.add(module)

    for module in graph:
        visit(module, [])


def test_no_module_uses_another_modules_private_names():
    for name, tree in MODULES.items():
        for module, names in imported_modules(tree).items():
            private = sorted(n for n in names if n.startswith("_") and n != "__version__")
            assert not private, f"rlhf_lab/{name}.py imports private {private} from {module}"
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in MODULES:
                assert not node.attr.startswith("_"), f"rlhf_lab/{name}.py uses {node.value.id}.{node.attr}"


def test_no_function_is_longer_than_one_screen():
    for name, tree in MODULES.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                assert length <= MAX_FUNCTION_LINES, f"rlhf_lab/{name}.py: {node.name} has {length} lines"


def test_the_package_docstring_maps_every_module():
    documented = set(re.findall(r"`(\w+)`", rlhf_lab.__doc__))
    missing = set(MODULES) - {"__init__", "__main__"} - documented
    assert not missing, f"rlhf_lab/__init__.py does not say what these modules are for: {sorted(missing)}"
