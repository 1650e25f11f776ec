"""The package's modules import each other in layers, without cycles between its parts: io and
data below nn, nn below frames, frames below models (a frame never reaches into a backbone, nn
never into the frames), and so on up to the command line. A cycle between two parts is what made
`Neighbourhood.graph` untyped before; this test names any new one with the imports that close it."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "crystalframes"


def part_of(module: str) -> str:
    """``crystalframes.nn.graph`` -> ``nn``; a top-level module is its own part."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "<crystalframes>"


def import_graph() -> dict[str, dict[str, list[str]]]:
    """part -> imported part -> the files that import it (top-level and deferred imports alike)."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        source = part_of(".".join(rel.parts))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                names = []
            for name in names:
                if name.startswith("crystalframes.") and part_of(name) != source:
                    graph[source][part_of(name)].append(str(path.relative_to(PACKAGE)))
    return graph


def cycles(graph) -> list[list[str]]:
    """Strongly connected parts of more than one member (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_between_parts_of_the_package():
    graph = import_graph()
    found = cycles(graph)
    detail = [{a: {b: graph[a][b] for b in group if b in graph[a]} for a in group} for group in found]
    assert not found, detail


def test_the_layers_of_the_frame_seam():
    graph = import_graph()
    assert "frames" not in graph["nn"], graph["nn"]["frames"]  # nn below frames
    assert "models" not in graph["frames"], graph["frames"]["models"]  # frames below models
    assert "nn" in graph["frames"] and "frames" in graph["models"]  # the test sees imports at all


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b": []}, "b": {"c": []}, "c": {"a": []}, "d": {"a": []}}) == [["a", "b", "c"]]
