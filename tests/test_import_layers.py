"""No import cycles inside ``selva_core``: neither between modules nor between its packages.

Every ``import`` counts, also those inside functions and under ``TYPE_CHECKING``: a cycle
hidden in a late import is still two modules that each need the other. The graph is read
from the source with ``ast`` (nothing is imported), so the check is fast.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "selva_core"


def _modules() -> dict[str, Path]:
    mods = {}
    for path in (ROOT / PACKAGE).rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _targets(module: str, path: Path, node: ast.AST, mods: dict[str, Path]) -> set[str]:
    """The ``selva_core`` modules one import statement reaches (the longest known prefix)."""
    if isinstance(node, ast.ImportFrom):
        if node.level:
            package = module if path.name == "__init__.py" else module.rpartition(".")[0]
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            name = ".".join(base + ([node.module] if node.module else []))
        else:
            name = node.module or ""
        names = [name] + [f"{name}.{alias.name}" for alias in node.names]
    else:
        names = [alias.name for alias in node.names]
    found = set()
    for name in names:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        if name:
            found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the ``selva_core`` modules it imports (a module importing its own parent
    package is not an edge: Python runs the parent first anyway)."""
    mods = _modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for module, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _targets(module, path, node, mods):
                    if target != module and not module.startswith(target + "."):
                        edges[module].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return found


def package_of(module: str) -> str:
    """``selva_core.training.trainer`` -> ``selva_core.training``; top-level modules stay."""
    return ".".join(module.split(".")[:2])


def package_graph(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for a, targets in edges.items():
        for b in targets:
            pa, pb = package_of(a), package_of(b)
            if pa != pb:
                graph.setdefault(pa, set()).add(pb)
                graph.setdefault(pb, set())
    return graph


def test_cycle_finder_reports_a_three_module_loop_and_ignores_a_chain():
    loop = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(loop) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_import_graph_counts_imports_inside_functions():
    edges = import_graph()
    # trainer.py imports variants inside a method: still an edge
    assert "selva_core.variants" in edges["selva_core.training.trainer"]
    assert "selva_core.model.lora.kind" in edges["selva_core.model.lora.layers"]


def test_no_import_cycle_between_selva_core_modules():
    found = cycles(import_graph())
    assert found == [], f"import cycles between modules: {found}"


def test_no_import_cycle_between_selva_core_packages():
    found = cycles(package_graph(import_graph()))
    assert found == [], f"import cycles between packages: {found}"
