"""Every `dsd_fast.` name a message, a docstring or the documentation tells users to call
exists: the package's sources, README.md, MODEL_CARD.md and docs/ are searched for dotted
names, and each is imported (its module) and looked up (the rest)."""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# `dsd_fast.x.y` not inside a path (dsd_fast/x.py) or a longer word; the compiled op
# modules (_C_*) are loaded by ops/ alone (two of them cannot share a process).
DOTTED = re.compile(r"(?<![\w/.-])dsd_fast(?:\.[A-Za-z_]\w*)+")


def _sources() -> list[Path]:
    docs = [REPO / "README.md", REPO / "MODEL_CARD.md", *sorted((REPO / "docs").glob("*.md"))]
    return sorted((REPO / "dsd_fast").rglob("*.py")) + [p for p in docs if p.is_file()]


def _named() -> dict[str, str]:
    """name -> the first file that names it."""
    found: dict[str, str] = {}
    for path in _sources():
        for m in DOTTED.finditer(path.read_text(encoding="utf-8")):
            name = m.group(0)
            if not any(part.startswith("_C") for part in name.split(".")):
                found.setdefault(name, str(path.relative_to(REPO)))
    return found


def _resolve(name: str):
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        break
    for attr in parts[i:]:
        obj = getattr(obj, attr)
    return obj


NAMES = _named()


def test_names_were_found():
    assert "dsd_fast.load" in NAMES or "dsd_fast.segment" in NAMES, sorted(NAMES)[:20]


@pytest.mark.parametrize("name", sorted(NAMES))
def test_a_name_users_are_told_exists(name):
    try:
        _resolve(name)
    except (ImportError, AttributeError) as e:
        pytest.fail(f"{NAMES[name]} names {name}, which does not exist: {e}")
