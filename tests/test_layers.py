"""The package's rooms and the way imports go between them, read from the source: no module
imports a room above its own, rooms of one floor do not import each other, nothing imports
Snakemake, and no two modules import each other, however indirectly."""

import ast
from pathlib import Path

import pytest
from conftest import ROOT

PACKAGE = ROOT / "shadowft"
# Bottom to top. A module may import its own room and the floors below it.
FLOORS = (
    ("shadowft.io", "shadowft.exports", "shadowft.workers"),
    ("shadowft.versions",),
    ("shadowft.engine",),
    ("shadowft.data", "shadowft.training", "shadowft.evaluation"),
    ("shadowft.demo",),
    ("shadowft.workflow",),
    ("shadowft.report",),
    ("shadowft.cli",),
    ("shadowft.__main__",),
)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every shadowft module `path` imports, at its top level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}
IMPORTS = {
    name: {imported for imported in imports_of(path) if imported in MODULES and imported != name}
    for name, path in MODULES.items()
}


def room_of(module: str) -> tuple[int, str]:
    for floor, rooms in enumerate(FLOORS):
        for room in rooms:
            if module == room or module.startswith(room + "."):
                return floor, room
    raise AssertionError(f"{module} is in no room of FLOORS")


def test_every_module_has_a_room():
    for module in MODULES:
        if module != "shadowft":
            room_of(module)


@pytest.mark.parametrize("module", sorted(name for name in MODULES if name != "shadowft"))
def test_imports_go_down(module):
    floor, room = room_of(module)
    for imported in IMPORTS[module]:
        if imported == "shadowft":
            continue
        other_floor, other_room = room_of(imported)
        assert other_room == room or other_floor < floor, (
            f"{module} ({room}) imports {imported} ({other_room}), which is not on a floor below"
        )


def test_nothing_imports_snakemake():
    users = [name for name, path in MODULES.items() if any(i.split(".")[0] == "snakemake" for i in imports_of(path))]
    assert users == []


def test_no_two_modules_import_each_other():
    """Depth-first search of the module graph for a cycle."""
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for imported in sorted(IMPORTS[module]):
            # A package's lazy names (shadowft.exports) import nothing until used: its __init__ is no edge.
            if (MODULES[imported].name == "__init__.py") or state.get(imported) == "done":
                continue
            assert state.get(imported) != "open", "import circle: " + " -> ".join([*path, module, imported])
            visit(imported, [*path, module])
        state[module] = "done"

    for module in sorted(MODULES):
        if module not in state:
            visit(module, [])


def test_the_checker_sees_an_upward_import(tmp_path):
    """The rule above would catch the engine importing the workflow."""
    source = tmp_path / "bad.py"
    source.write_text("from shadowft.workflow.plan import Plan\n")
    floor, _ = room_of("shadowft.engine.grafting")
    assert any(room_of(imported)[0] > floor for imported in imports_of(source) if imported in MODULES)
