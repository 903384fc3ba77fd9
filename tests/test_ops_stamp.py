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
    (tmp_path / "setup.py").write_text(SETUP)
    return tmp_path


SETUP = """FLAGS = ["-O3"]
setup(name="x", install_requires=["numpy>=1.24"],
      extras_require={"test": ["pytest>=8", "triton>=3.0; platform_system == 'Nowhere'"]})
"""


def test_digest_follows_contents_not_times(stamp, tree):
    before = stamp.digest(tree)
    os.utime(tree / "csrc" / "op.cpp", (1, 1))           # a checkout changes times only
    assert stamp.digest(tree) == before
    setup_py = SETUP.replace('"-O3"', '"-O2"')          # a compiler flag
    for path, text in (("csrc/op.cpp", "int f() { return 2; }\n"), ("csrc/simd.h", "//\n"),
                       ("setup.py", setup_py)):
        old = (tree / path).read_text()
        (tree / path).write_text(text)
        assert stamp.digest(tree) != before, path
        (tree / path).write_text(old)
    assert stamp.digest(tree) == before
    (tree / "csrc" / "new.cpp").write_text("")              # a new source file
    assert stamp.digest(tree) != before


def test_new_dependencies_and_comments_need_no_rebuild(stamp, tree):
    before = stamp.digest(tree)
    (tree / "setup.py").write_text("# a comment\n" + SETUP.replace(
        '"test": [', '"serve": ["fastapi>=0.110"], "test": [').replace(
        '"numpy>=1.24"', '"numpy>=1.24", "scipy>=1.10"'))
    assert stamp.digest(tree) == before
    # dependency lists that are not plain literals: the whole file counts
    (tree / "setup.py").write_text(SETUP.replace('install_requires=["numpy>=1.24"]',
                                                 'install_requires=REQS'))
    assert stamp.dependencies(tree) is None and stamp.digest(tree) != before


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


def test_requirements_follow_the_extras(stamp, tree, capsys):
    assert stamp.requirements([], tree) == ["numpy>=1.24"]
    # markers evaluated here, not passed on: triton's names another platform
    assert stamp.requirements(["test"], tree) == ["numpy>=1.24", "pytest>=8"]
    assert stamp.requirements(["test", "nosuch"], tree) == ["numpy>=1.24", "pytest>=8"]
    assert "no extra 'nosuch'" in capsys.readouterr().err


def test_this_trees_setup_py_is_read(stamp):
    reqs = stamp.requirements(["test"])
    assert any(r.startswith("torch>=") for r in reqs)
    assert any(r.startswith("pytest-benchmark") for r in reqs)
