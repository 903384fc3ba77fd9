"""The build stamp that lets `make install` skip rebuilding the C++ ops (.ci/ops_stamp.py)."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "ops_stamp.py"


@pytest.fixture(scope="module")
def stamp():
    spec = importlib.util.spec_from_file_location("ops_stamp", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "csrc").mkdir()
    (tmp_path / "csrc" / "op.cpp").write_text("int f() { return 1; }\n")
    (tmp_path / "csrc" / "simd.h").write_text("#pragma once\n")
    (tmp_path / "setup.py").write_text("setup()\n")
    return tmp_path


def test_digest_follows_contents_not_times(stamp, tree):
    before = stamp.digest(tree)
    os.utime(tree / "csrc" / "op.cpp", (1, 1))           # a checkout changes times only
    assert stamp.digest(tree) == before
    for path, text in (("csrc/op.cpp", "int f() { return 2; }\n"), ("csrc/simd.h", "//\n"),
                       ("setup.py", "setup(name='x')\n")):
        old = (tree / path).read_text()
        (tree / path).write_text(text)
        assert stamp.digest(tree) != before, path
        (tree / path).write_text(old)
    assert stamp.digest(tree) == before
    (tree / "csrc" / "new.cpp").write_text("")              # a new source file
    assert stamp.digest(tree) != before


def test_digest_follows_the_build_environment(stamp, tree, monkeypatch):
    monkeypatch.delenv("CXXFLAGS", raising=False)
    before = stamp.digest(tree)
    monkeypatch.setenv("CXXFLAGS", "-O0")
    assert stamp.digest(tree) != before


def test_check_asks_for_a_build(stamp, tree):
    assert "no build/ops.stamp" in stamp.check(tree)
    (tree / "build").mkdir()
    (tree / stamp.STAMP).write_text("0" * 64 + "\n")
    assert "changed" in stamp.check(tree)
    (tree / stamp.STAMP).write_text(stamp.digest(tree) + "\n")
    # the sources match, but the installed dsd_fast is not this tree's editable install
    assert "installed" in stamp.check(tree)


def test_requirements_follow_the_extras(stamp):
    base = stamp.requirements([])
    assert any(r.startswith("torch") for r in base)
    assert not any(r.startswith("pytest") for r in base)
    with_test = stamp.requirements(["test"])
    assert set(base) < set(with_test) and any(r.startswith("pytest>=") for r in with_test)
    assert all(";" not in r for r in with_test)             # markers evaluated, not passed on
