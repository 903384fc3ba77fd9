"""No import circle among dsd_fast's modules (.ci/import_cycles.py reads every `import`
statement, those inside functions too): a layer imports only the layers below it."""
from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("import_cycles",
                                                  REPO / ".ci" / "import_cycles.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_no_import_circle(capsys):
    code = _tool().main(["--root", str(REPO)])
    out = capsys.readouterr().out
    assert code == 0, out


def test_the_tool_finds_a_circle(tmp_path):
    """On a package whose two modules import each other (one inside a function, as the
    command line's drivers once did), the tool reports them."""
    pkg = tmp_path / "dsd_fast"
    (pkg / "cli").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "cli" / "__init__.py").write_text("")
    (pkg / "cli" / "a.py").write_text("from .b import f\n")
    (pkg / "cli" / "b.py").write_text("def f():\n    from . import a\n")
    (pkg / "cli" / "c.py").write_text("from . import a\n")
    tool = _tool()
    graph = {n: tool.imports_of(n, p, tool.modules(tmp_path), False)
             for n, p in tool.modules(tmp_path).items()}
    assert tool.cycles(graph) == [["dsd_fast.cli.a", "dsd_fast.cli.b"]]
    top = {n: tool.imports_of(n, p, tool.modules(tmp_path), True)
           for n, p in tool.modules(tmp_path).items()}
    assert tool.cycles(top) == []                  # at import time there is none
