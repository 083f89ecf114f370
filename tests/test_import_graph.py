"""The package's import graph has no cycle outside the model registry, function-level imports
and ``TYPE_CHECKING`` imports included (import-linter's layer contract ignores the latter)."""

from __future__ import annotations

import grimp

ALLOWED = "slidescan.models"  # the registry imports the architectures, which register themselves


def cycles(edges: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.add(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def package_graph() -> dict[str, set[str]]:
    graph = grimp.build_graph("slidescan", include_external_packages=False)
    modules = {m for m in graph.modules if m.startswith("slidescan")}
    # A package's __init__ importing its own modules is not a cycle between modules.
    return {
        m: {n for n in graph.find_modules_directly_imported_by(m) if not m.startswith(n + ".")}
        for m in modules
    }


def test_cycle_finder_finds_cycles() -> None:
    found = cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert found == [{"a", "b", "c"}]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_outside_the_model_registry() -> None:
    bad = [sorted(c) for c in cycles(package_graph()) if not all(m.startswith(ALLOWED) for m in c)]
    assert not bad, f"import cycles: {bad}"
