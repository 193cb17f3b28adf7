"""The package's import graph has no cycles: every ``import`` counts, at module top, inside a
function, or under ``TYPE_CHECKING`` (a loop that only type checkers follow is still a loop in
the design). A package ``__init__`` that re-exports its submodules is the one allowed way for a
module to import its own parent package (``from normzoo.x import y`` imports ``normzoo.x``)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "normzoo"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the normzoo modules it imports (resolved to modules, not names)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = name.split(".")
                    anchor = anchor if is_package else anchor[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and target.startswith("normzoo"):
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph[node]:
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def without_parent_reexports(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Drop edges child -> ancestor package: importing ``normzoo.a.b`` runs ``normzoo.a``'s
    ``__init__`` first, which is not a dependency of b's code on a's re-exports."""
    return {
        name: {t for t in targets if not name.startswith(t + ".")}
        for name, targets in graph.items()
    }


def test_no_import_cycles():
    found = cycles(without_parent_reexports(import_graph()))
    assert not found, "import cycles (every import counted):\n" + "\n".join(
        " <-> ".join(c) for c in found
    )


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_bench_stages_point_one_way():
    """plan <- record <- execute <- run: a stage never imports a later one."""
    order = ["normzoo.bench.plan", "normzoo.bench.record", "normzoo.bench.execute"]
    graph = import_graph()
    for name, targets in graph.items():
        stage = next((s for s in order if name.startswith(s + ".") or name == s), None)
        if stage is None:
            continue
        later = order[order.index(stage) + 1 :] + ["normzoo.bench.run"]
        bad = [t for t in targets if any(t == s or t.startswith(s + ".") for s in later)]
        assert not bad, f"{name} imports a later stage: {bad}"
