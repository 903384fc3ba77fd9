"""The package's layers (every import statement counts, at the top of a module or inside a
function; tests/test_import_cycles.py checks for circles): no arrow runs from a lower
layer to a higher one:

    base        images, preprocess, results, diffusion/, ops/, io, metrics, ... (no engine)
    segmenter   options.py, segmenter.py, pipeline.py (the protocol and its loop)
    families    families/ (a folder per family, the registry, the shared layers)
    checkpoint  checkpoint.py (files -> a family's segmenter)
    api         api.py, volumes/
    apps        cli/, train/, serve/
    top         dsd_fast/__init__.py

Built from the source with `ast`, so it sees lazy imports too. No module outside families/
imports a family package by name (the registry finds them)."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "dsd_fast"
LAYERS = (
    ("segmenter", ("dsd_fast.options", "dsd_fast.segmenter", "dsd_fast.pipeline")),
    ("families", ("dsd_fast.families",)),
    ("checkpoint", ("dsd_fast.checkpoint",)),
    ("api", ("dsd_fast.api", "dsd_fast.volumes")),
    ("apps", ("dsd_fast.cli", "dsd_fast.train", "dsd_fast.serve")),
)
FAMILY_PACKAGES = ("dermosegdiff", "medsegdiff", "medsegdiff_official", "diffseg")


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()

    def owner(name: str) -> str:
        while name not in modules and "." in name:
            name = name.rsplit(".", 1)[0]
        return name

    graph = {}
    for name, (path, is_package) in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    here = name.split(".") if is_package else name.split(".")[:-1]
                    here = here[:len(here) - node.level + 1]
                    base = ".".join(here + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                           for a in node.names]
            deps |= {owner(t) for t in targets if t.startswith("dsd_fast")}
        graph[name] = deps - {name}
    return graph


def _layer(module: str) -> int:
    for i, (_, prefixes) in enumerate(LAYERS, 1):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    return len(LAYERS) + 1 if module == "dsd_fast" else 0


def test_no_arrow_up_the_layers():
    graph = _graph()
    up = sorted((m, d) for m, deps in graph.items() for d in deps if _layer(d) > _layer(m))
    assert up == []


def test_only_families_name_a_family():
    graph = _graph()
    named = sorted((m, d) for m, deps in graph.items() for d in deps
                   if not m.startswith("dsd_fast.families")
                   and any(d.startswith(f"dsd_fast.families.{f}") for f in FAMILY_PACKAGES))
    assert named == []


def test_the_graph_sees_lazy_imports():
    """The checker itself: an import inside a function is an arrow (pipeline.py imports the
    ops inside `denoiser`)."""
    assert "dsd_fast.ops" in _graph()["dsd_fast.pipeline"]
