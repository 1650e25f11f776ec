"""No import cycles among crystalframes modules.

A cycle works only as long as every module of it happens to be imported in a lucky order (or
hides one side inside a function), and it says the shared piece sits in the wrong module. The
graph is read with :mod:`ast` from ``src/``: every ``import`` anywhere in a module, at module
level, inside functions and under ``TYPE_CHECKING`` alike (see :func:`imports_of` for the edges)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "crystalframes"


def module_names() -> dict[str, Path]:
    """Dotted name -> file of every module of the package (a package is its ``__init__``)."""
    out = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` (file ``path``) imports anywhere in its code.

    Importing ``a.b.c`` runs ``a``, ``a.b`` and ``a.b.c``: each is an edge, except the importer's
    own ancestor packages, which Python has always started before the importer runs (so
    ``from crystalframes.models import ecomformer`` inside ``crystalframes.models.specs`` is an
    edge to the submodule only). Taking a *name* out of a package, ``from P import f``, is an
    edge to P even when P is an ancestor: f must already exist in P's half-run ``__init__``."""
    is_package = path.name == "__init__.py"
    ancestors = {name.rsplit(".", k)[0] for k in range(1, name.count(".") + 1)}
    if is_package:
        ancestors.add(name)

    def modules_run(target: str) -> set[str]:
        parts = target.split(".")
        prefixes = {".".join(parts[:k]) for k in range(1, len(parts) + 1)}
        return {m for m in prefixes if m in known and m not in ancestors}

    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found |= modules_run(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing module's package
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            found |= modules_run(origin)
            for alias in node.names:
                submodule = f"{origin}.{alias.name}"
                if submodule in known:
                    found |= modules_run(submodule)
                elif origin in known:
                    found.add(origin)  # a name out of the package's (possibly half-run) __init__
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    known = set(modules)
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path a -> ... -> a) per strongly connected component of two or more
    modules (Tarjan), so each tangle is reported once."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                components.append(set(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [shortest_cycle(graph, component) for component in components]


def shortest_cycle(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the first module of ``component`` (breadth-first)."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle in component {sorted(component)}")


def test_the_package_has_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 40 and graph[PACKAGE + ".frames"], "the graph was not read"
    found = cycles(graph)
    # one shortest cycle per tangle, then every module of the tangle's every 2-cycle, so that a
    # tangle of several cycles names each pair that imports both ways
    pairs = sorted({tuple(sorted((a, b))) for a in graph for b in graph[a] if a in graph.get(b, ())})
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found) + (
        "\nmodules importing each other: " + ", ".join(f"{a} <-> {b}" for a, b in pairs) if pairs else "")


@pytest.mark.parametrize("source_a, source_b", [
    ("from pkg import b\n", "def f():\n    import pkg.a\n"),         # function-level import
    ("from . import b\n", "from .a import x\n"),                       # relative imports
    ("import pkg.b as b\n", "if False:\n    from pkg.a import y\n"),   # any nested block
])
def test_a_cycle_is_found_at_any_depth(tmp_path, source_a, source_b):
    """The detector itself: a two-module cycle written in each import form is found."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text(source_a)
    (pkg / "b.py").write_text(source_b)
    known = {"pkg", "pkg.a", "pkg.b"}
    graph = {name: imports_of(name, pkg / f"{name.split('.')[-1]}.py", known) for name in ("pkg.a", "pkg.b")}
    graph["pkg"] = set()
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.a"]]


def test_a_name_taken_from_the_own_package_is_a_cycle_a_submodule_is_not(tmp_path):
    """``from pkg import f`` in pkg.a, whose ``__init__`` imports pkg.a, needs f from a half-run
    ``__init__``: a cycle. ``from pkg import b`` only runs pkg.b (pkg is already running)."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from pkg.a import g\nf = 1\n")
    (pkg / "a.py").write_text("def g():\n    from pkg import f\n")
    (pkg / "b.py").write_text("from pkg import a\n")
    known = {"pkg", "pkg.a", "pkg.b"}
    graph = {name: imports_of(name, pkg / file, known)
             for name, file in (("pkg", "__init__.py"), ("pkg.a", "a.py"), ("pkg.b", "b.py"))}
    assert graph["pkg.b"] == {"pkg.a"}
    assert cycles(graph) == [["pkg", "pkg.a", "pkg"]]


def private_imports(path: Path) -> list[str]:
    """``module._name`` for every private name (one leading underscore) ``path`` imports from
    another module (dunders such as ``__version__`` are public)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    out.append(f"{'.' * node.level}{node.module or ''}.{alias.name}")
    return out


def test_commands_share_helpers_through_a_module_of_their_own():
    """A command module imports no other command's module and no private name from anywhere:
    what commands share lives in crystalframes.cli.common (helpers) or cli.options (option
    callbacks), under public names."""
    modules = module_names()
    known = set(modules)
    shared = {"crystalframes.cli.common", "crystalframes.cli.options"}
    commands = {name for name in modules if name.startswith("crystalframes.cli.") and name not in shared}
    assert {"crystalframes.cli.check", "crystalframes.cli.predict", "crystalframes.cli.symmetry"} <= commands
    problems = []
    for name in sorted(commands | shared | {"crystalframes.cli"}):
        for other in sorted(imports_of(name, modules[name], known) & commands):
            if name != "crystalframes.cli":  # the app registers every command
                problems.append(f"{name} imports the command module {other}")
        problems += [f"{name} imports the private {p}" for p in private_imports(modules[name])]
    assert not problems, "\n".join(problems)


def test_private_imports_are_found(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("from crystalframes.cli.predict import _collect\nfrom crystalframes import __version__\n"
                     "def f():\n    from ..api import _resolve_model_path\n")
    assert private_imports(probe) == ["crystalframes.cli.predict._collect", "..api._resolve_model_path"]


def part_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The module graph folded to the package's parts (``crystalframes.nn.graph`` -> ``nn``; a
    top-level module is its own part)."""
    def part(module: str) -> str:
        return module.split(".")[1] if "." in module else module

    out: dict[str, set[str]] = {}
    for a, targets in graph.items():
        out.setdefault(part(a), set()).update(part(b) for b in targets if part(b) != part(a))
    return out


def test_the_parts_of_the_frame_seam_are_layered():
    """No cycle between the package's parts either (a module-level acyclic graph can still tie two
    parts together), and the frame seam in layers: nn below frames (nn never imports a frame),
    frames below models (a frame never reaches into a backbone)."""
    parts = part_graph(import_graph())
    assert "nn" in parts["frames"] and "frames" in parts["models"], "the graph was not read"
    assert not cycles(parts), cycles(parts)
    assert "frames" not in parts["nn"] and "models" not in parts["frames"] and "models" not in parts["nn"]
