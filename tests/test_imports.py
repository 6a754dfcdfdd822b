"""A house without knots: gpucnn (and the benchmark's helpers, scripts/benchmarking/) import
one way, with no circle, whether an import sits at module level or inside a function; and
every .py file in gpucnn/ and scripts/ holds about one idea (at most MAX_LINES lines). The
graph is read from the source (ast), nothing is imported. The exceptions known today are
named below (KNOWN_IMPORT_CYCLES, LONG_FILES_ALLOWED), and a test fails when one of them no
longer holds, so that the lists only shrink."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# the packages whose imports must flow one way: the library, and the benchmark's helpers
PACKAGES = {"gpucnn": REPO / "gpucnn", "benchmarking": REPO / "scripts" / "benchmarking"}
MAX_LINES = 400

# Import circles known today, as the import that closes each: (importer, imported). The
# circle test leaves out exactly these imports, so any other circle still fails. None now:
# keep it that way (an entry that no longer closes a circle fails its own test).
KNOWN_IMPORT_CYCLES: set[tuple[str, str]] = set()

# Files over MAX_LINES known today: split them along their ideas, then delete them here.
# None now (gpucnn/training/run.py and scripts/train.py were split: gpucnn/training/loops.py, scripts/train_flags.py).
LONG_FILES_ALLOWED: set[str] = set()


def module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(package: str = "gpucnn") -> dict[str, Path]:
    root = PACKAGES[package]
    return {module_name(path, root): path for path in sorted(root.rglob("*.py"))}


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The gpucnn modules that ``name`` (the file at ``path``) imports, at module level or
    inside functions: ``import gpucnn.x``, ``from gpucnn.x import y``, ``from .x import y``,
    ``from .. import x``: the module y when it is one, else the module that defines y.
    The packages above an imported module are not counted: Python has run their __init__
    before any of their modules."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source
                       for alias in node.names]
        else:
            continue
        for target in targets:
            # `import gpucnn.a.b` imports gpucnn.a.b; the packages above it only run their __init__
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(package: str = "gpucnn") -> dict[str, set[str]]:
    found = modules(package)
    return {name: imported_modules(name, path, set(found)) for name, path in found.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each as one
    circle through it: [a, b, ..., a]."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [circle_through(graph, component) for component in components]


def circle_through(graph, component) -> list[str]:
    """One import path from the component's first module back to itself, inside it."""
    start, members = component[0], set(component)
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        for w in sorted(graph[path[-1]] & members):
            if w == start:
                return path + [start]
            if w not in seen:
                seen.add(w)
                paths.append(path + [w])
    return component


def test_the_import_graph_sees_relative_absolute_and_function_level_imports():
    graph = import_graph()
    assert "gpucnn.backends.backend" in graph["gpucnn"]  # from .backend import ... (an __init__)
    assert "gpucnn.backends.kernel_groups" in graph["gpucnn.backends.backend"]  # from . import kernel_groups
    assert "gpucnn" not in graph["gpucnn.backends.backend"]  # ... which runs no more of gpucnn/__init__
    assert "gpucnn.training.tensorboard" in graph["gpucnn.training.run"]  # inside a function
    assert "gpucnn.distributed" in graph["gpucnn.training.run"]  # from .distributed import ...
    assert "gpucnn.backends.backend" in graph["gpucnn.distributed.mpi"]  # from ..backend import ...
    assert "gpucnn.distributed.communicator" in graph["gpucnn.distributed.mpi"]
    assert "benchmarking.measure" in import_graph("benchmarking")["benchmarking.rows"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_import_circle(package):
    graph = import_graph(package)
    for importer, imported in KNOWN_IMPORT_CYCLES:
        if importer in graph:
            graph[importer] = graph[importer] - {imported}
    found = cycles(graph)
    assert not found, f"import circles in {package} (make the imports flow one way): " + "; ".join(
        " -> ".join(c) for c in found)


def test_the_known_import_circles_still_exist():
    """An exception that no longer holds is deleted from KNOWN_IMPORT_CYCLES."""
    found = cycles(import_graph())
    gone = [(importer, imported) for importer, imported in KNOWN_IMPORT_CYCLES
            if not any(importer in c and imported in c for c in found)]
    assert not gone, f"no longer circles: delete them from KNOWN_IMPORT_CYCLES: {gone}"


def source_files():
    return sorted(p for folder in ("gpucnn", "scripts") for p in (REPO / folder).rglob("*.py"))


@pytest.mark.parametrize("path", source_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_source_file_holds_about_one_idea(path):
    name = path.relative_to(REPO).as_posix()
    lines = len(path.read_text(encoding="utf-8").splitlines())
    if name in LONG_FILES_ALLOWED:
        return
    assert lines <= MAX_LINES, (f"{name} has {lines} lines, expected at most {MAX_LINES}: a file that long "
                                "usually holds two ideas; split it along them")


def test_the_long_files_allowed_still_exist_and_are_long():
    """An allowance that is no longer needed is deleted from LONG_FILES_ALLOWED."""
    for name in LONG_FILES_ALLOWED:
        path = REPO / name
        assert path.exists(), f"{name} is gone: delete it from LONG_FILES_ALLOWED"
        lines = len(path.read_text(encoding="utf-8").splitlines())
        assert lines > MAX_LINES, f"{name} has {lines} lines now: delete it from LONG_FILES_ALLOWED"


def test_the_top_level_holds_few_modules_and_the_folders_name_the_parts():
    """Folders name the parts (docs/design.md, "Where things are"); at most 12 modules sit
    directly in gpucnn/, so a newcomer finds a thing by its folder's name."""
    top = sorted(p.name for p in (REPO / "gpucnn").glob("*.py") if p.name != "__init__.py")
    assert len(top) <= 12, f"gpucnn/ holds {len(top)} modules at its top level: {top}; move them into a folder"
    folders = {p.name for p in (REPO / "gpucnn").iterdir() if (p / "__init__.py").exists()}
    assert {"nn", "optim", "data", "training", "backends", "distributed"} <= folders
    design = (REPO / "docs" / "design.md").read_text(encoding="utf-8")
    assert all(f"`{name}/`" in design for name in folders), "docs/design.md names every folder"
