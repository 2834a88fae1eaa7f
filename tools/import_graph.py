"""The package's import graph: between layers (the `lint-imports` contract in pyproject.toml) and
between modules (no cycles).

    python tools/import_graph.py            # print each top-level part's imports and any cycle
    python tools/import_graph.py --check    # exit 1 when modules import each other in a cycle

Run with the project's venv (it uses `grimp`, which import-linter brings).
"""

from __future__ import annotations

import sys
from collections import defaultdict

import grimp

PACKAGE = "nexus_grpc"


def part(module: str) -> str:
    """`nexus_grpc.servicers.envoy.ext_proc` -> `servicers`."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "(root)"


def cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iteratively)."""
    modules = sorted(graph.modules)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in modules:
        if root in index:
            continue
        work = [(root, iter(edges[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges.get(child, []))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
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


def main(argv: list[str]) -> int:
    graph = grimp.build_graph(PACKAGE, include_external_packages=False)
    between: dict[str, set[str]] = defaultdict(set)
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            if part(module) != part(imported):
                between[part(module)].add(part(imported))
    for name in sorted(between):
        print(f"{name:12} -> {', '.join(sorted(between[name]))}")
    found = cycles(graph)
    for component in found:
        print("cycle:", " <-> ".join(component))
    if not found:
        print(f"no import cycle among {len(graph.modules)} modules")
    return 1 if found and "--check" in argv else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
