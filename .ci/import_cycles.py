"""Print the import circles among dsd_fast's modules, read from their `import` statements.

    python .ci/import_cycles.py            # every import, also those inside functions
    python .ci/import_cycles.py --top      # module-level imports only (what runs at import)

An edge A -> B is any `import B`, `from B import x` or `from . import B` in A (relative
imports resolved; `from package import name` counts as an import of package.name when that
is a module, else of the package). A submodule's implicit import of its own packages is
not an edge (Python has them in sys.modules first). Exit status 1 when there is a circle;
tests/test_import_cycles.py runs it.
"""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

PACKAGE = "dsd_fast"


def modules(root: Path) -> dict[str, Path]:
    """Module name -> file, for every .py under root/PACKAGE."""
    found = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _top_level(tree: ast.Module):
    """The import nodes that run when the module is imported (not inside a def/class body
    that runs later; `if TYPE_CHECKING:` blocks skipped)."""
    todo = list(tree.body)
    while todo:
        node = todo.pop(0)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if "TYPE_CHECKING" not in ast.unparse(node.test):
                todo[:0] = node.body + node.orelse
        elif isinstance(node, ast.Try):
            todo[:0] = node.body + node.orelse + node.finalbody + \
                [n for h in node.handlers for n in h.body]
        elif isinstance(node, ast.With):
            todo[:0] = node.body


def imports_of(name: str, path: Path, known: dict, top_only: bool) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = _top_level(tree) if top_only else (
        n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)))
    is_package = path.name == "__init__.py"
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            if node.level:
                base = name.split(".")
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from package import module` imports the module; `from module import name`
            # the module
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod
                       for a in node.names]
        for t in targets:
            # the longest known module the name starts with
            parts = t.split(".")
            for i in range(len(parts), 0, -1):
                cand = ".".join(parts[:i])
                if cand in known:
                    if cand != name:
                        out.add(cand)
                    break
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as a
    sorted list; the circles are inside them."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--top", action="store_true", help="module-level imports only")
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    args = ap.parse_args(argv)
    known = modules(args.root)
    graph = {n: imports_of(n, p, known, args.top) for n, p in known.items()}
    found = cycles(graph)
    for comp in found:
        inner = {v: sorted(graph[v] & set(comp)) for v in comp}
        print(f"circle among {len(comp)} modules:")
        for v in comp:
            print(f"  {v} -> {', '.join(inner[v])}")
    print(f"{len(known)} modules, {sum(map(len, graph.values()))} imports, "
          f"{len(found)} circle(s) ({'module level' if args.top else 'all imports'})")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
