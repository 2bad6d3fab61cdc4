"""The package's import graph: no circle, and every import points down the floors (or stays on its floor).

Every import counts, the lazy ones inside functions and those under TYPE_CHECKING too: they are what a
refactor has to respect as much as the ones at the top of a module.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "vtp_export"

# Lowest first. A module's floor is that of the longest prefix listed for it.
FLOORS: list[tuple[str, ...]] = [
    # the ground: shared vocabulary, errors, graph I/O names, static-shape ops, plain utilities
    ("vtp_export", "vtp_export.contract", "vtp_export.errors", "vtp_export.registry", "vtp_export.ops",
     "vtp_export.util", "vtp_export.onnx.names"),
    ("vtp_export.targets", "vtp_export.toolchains"),  # deployment targets (data) and the toolchains they name
    ("vtp_export.towers",),  # tower graph code
    ("vtp_export.models",),  # architecture adapters, crop layouts, tokenizers
    ("vtp_export.methods",),  # pruning methods: features -> Selection
    ("vtp_export.checkpoint",),  # locating and loading weights into a model's modules
    ("vtp_export.onnx",),  # ONNX export, sessions, signatures, random inputs
    ("vtp_export.records",),  # config.json's typed records, the export folder
    ("vtp_export.precision",),  # reduced-precision graphs, fidelity, calibration
    ("vtp_export.trt",),  # TensorRT: lint, parser check, recipe, builder, device detection
    ("vtp_export.export",),  # the vision graph, verification, the export job
    ("vtp_export.runtime",),  # vision backends, LLM backends, the pipeline, profiles
    ("vtp_export.serve",),  # the vision graph in front of vLLM: the LLM folder, the plugin, the HTTP server
    ("vtp_export.cli", "vtp_export.__main__"),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports anywhere in its body ("from pkg import name" counts name where it is
    a module of the project, else pkg)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("vtp_export")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vtp_export"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in known else node.module)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    known = {module_name(p) for p in paths}
    graph = {module_name(p): imported_modules(p, known) for p in paths}
    unknown = {(m, i) for m, imports in graph.items() for i in imports if i not in known}
    assert not unknown, f"imports of modules that do not exist: {sorted(unknown)}"
    return graph


def floor(module: str) -> int:
    best, level = -1, None
    for index, prefixes in enumerate(FLOORS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, level = len(prefix), index
    assert level is not None, f"{module} is on no floor: add it to FLOORS"
    return level


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module, or a module importing itself (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in graph[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == module:
                    break
            if len(component) > 1 or module in graph[module]:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def test_no_import_circle():
    assert cycles(import_graph()) == []


def test_imports_point_down_the_floors():
    graph = import_graph()
    upward = sorted(f"{m} (floor {floor(m)}) -> {i} (floor {floor(i)})"
                    for m, imports in graph.items() for i in imports if floor(i) > floor(m))
    assert upward == []


def test_the_ground_contract_imports_nothing_of_the_project():
    assert import_graph()["vtp_export.contract"] == set()


@pytest.mark.parametrize("graph,expected", [
    ({"a": {"b"}, "b": {"a"}, "c": set()}, [["a", "b"]]),
    ({"a": {"a"}}, [["a"]]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
])
def test_cycles_finds_circles(graph, expected):
    assert cycles(graph) == expected


def test_floor_of_a_nested_module_is_its_longest_prefix():
    assert floor("vtp_export.onnx.names") == 0 and floor("vtp_export.onnx.signature") == floor("vtp_export.onnx")
