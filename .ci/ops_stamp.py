"""Is the C++ ops' build current? `make install` asks before it rebuilds them (~4 minutes).

    python .ci/ops_stamp.py check     exit 0: the editable install of this tree is in place,
                                      its ops were built from the sources, torch and python
                                      of now, and they import; exit 1 (with the reason on
                                      stderr) otherwise
    python .ci/ops_stamp.py begin     before the install: drop the stamp, note the digest of
                                      the sources the build is about to read
    python .ci/ops_stamp.py commit    after a successful install: that digest becomes the
                                      stamp (a failed or stopped build leaves none)
    python .ci/ops_stamp.py requirements EXTRAS
                                      setup.py's requirements for the comma-separated EXTRAS,
                                      one a line, markers evaluated (for `pip install -r`:
                                      a new extra or dependency arrives without a rebuild)

The digest covers what the built modules depend on: csrc/* (names and bytes), setup.py less
its dependency lists (install_requires, extras_require: new dependencies need no rebuild;
everything else, the extensions' flags included, counts; comments do not), the torch build
(version and git hash: the ops link against its ABI), the python version and the environment
variables the build reads. The stamp lives in build/ (ignored by git), so a fresh clone has
none and builds everything.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAMP = Path("build") / "ops.stamp"
PENDING = Path("build") / "ops.stamp.pending"
# what setup.py and torch.utils.cpp_extension read from the environment
BUILD_ENV = ("DSD_FAST_NO_EXT", "CC", "CXX", "CFLAGS", "CXXFLAGS", "LDFLAGS", "MAX_JOBS")
DEPENDENCY_KEYWORDS = ("install_requires", "extras_require")


def _setup_call(tree: ast.Module) -> ast.Call | None:
    """The module's one top-level `setup(...)` call, or None."""
    calls = [n.value for n in tree.body if isinstance(n, ast.Expr)
             and isinstance(n.value, ast.Call) and getattr(n.value.func, "id", None) == "setup"]
    return calls[0] if len(calls) == 1 else None


def dependencies(root: Path = ROOT) -> dict | None:
    """setup.py's {"install_requires": [...], "extras_require": {...}} when both are written
    as literals in its setup() call; else None."""
    call = _setup_call(ast.parse((root / "setup.py").read_text()))
    if call is None:
        return None
    found = {k.arg: k.value for k in call.keywords if k.arg in DEPENDENCY_KEYWORDS}
    try:
        return {k: ast.literal_eval(found[k]) for k in DEPENDENCY_KEYWORDS}
    except (KeyError, ValueError):
        return None


def build_part(root: Path = ROOT) -> bytes:
    """What of setup.py the build reads: its syntax tree less the dependency lists (and so
    less comments and layout); the whole file where those lists are not plain literals."""
    text = (root / "setup.py").read_text()
    if dependencies(root) is None:
        return text.encode()
    tree = ast.parse(text)
    call = _setup_call(tree)
    call.keywords = [k for k in call.keywords if k.arg not in DEPENDENCY_KEYWORDS]
    return ast.dump(tree).encode()


def digest(root: Path = ROOT) -> str:
    """sha256 over the ops' sources, setup.py's build part, the torch build, python and the
    build environment."""
    import torch
    h = hashlib.sha256()
    files = sorted(p for p in (root / "csrc").rglob("*") if p.is_file())
    for p in files:
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
    h.update(b"setup.py\0" + hashlib.sha256(build_part(root)).digest())
    facts = {"torch": torch.__version__, "torch_git": torch.version.git_version,
             "python": sys.version, "machine": platform.machine(),
             "env": {k: os.environ.get(k) for k in BUILD_ENV}}
    h.update(json.dumps(facts, sort_keys=True).encode())
    return h.hexdigest()


def editable_here(root: Path = ROOT) -> str | None:
    """None when dsd_fast is installed in editable mode from `root`; else why not."""
    from importlib import metadata
    try:
        dist = metadata.distribution("dsd_fast")
    except metadata.PackageNotFoundError:
        return "dsd_fast is not installed"
    url = json.loads(dist.read_text("direct_url.json") or "{}")
    if not url.get("dir_info", {}).get("editable"):
        return "dsd_fast is installed, but not in editable mode"
    if url.get("url") != root.as_uri():
        return f"dsd_fast is installed in editable mode from {url.get('url')}, not {root.as_uri()}"
    return None


def ops_import() -> str | None:
    """None when the built modules are there and the portable one imports; else why not.
    Only the portable module is imported: an AVX-512 build may not load on this CPU."""
    if os.environ.get("DSD_FAST_NO_EXT", "") == "1":
        return None
    isas = ("portable", "avx2", "avx512") \
        if platform.machine().lower() in ("x86_64", "amd64") else ("portable",)
    missing = [i for i in isas if importlib.util.find_spec(f"dsd_fast._C_{i}") is None]
    if missing:
        return f"not built: {', '.join(f'dsd_fast._C_{i}' for i in missing)}"
    try:
        import torch  # noqa: F401  (the modules need torch's libraries loaded first)
        importlib.import_module("dsd_fast._C_portable")
    except ImportError as e:
        return f"dsd_fast._C_portable does not import: {e}"
    return None


def check(root: Path = ROOT) -> str | None:
    """None when the install and the ops' build are current; else the reason to rebuild."""
    stamp = root / STAMP
    if not stamp.is_file():
        return f"no {STAMP} (a fresh checkout, or the ops were built by hand)"
    if stamp.read_text().strip() != digest(root):
        return ("the ops' sources, setup.py's build part, torch or python changed since the "
                "last build")
    return editable_here(root) or ops_import()


def requirements(extras: list[str], root: Path = ROOT) -> list[str]:
    """setup.py's requirements, and those of `extras`, whose markers hold here."""
    try:
        from packaging.requirements import Requirement
    except ImportError:                     # pip always carries a copy
        from pip._vendor.packaging.requirements import Requirement
    deps = dependencies(root)
    if deps is None:
        raise SystemExit("ops_stamp: setup.py's install_requires / extras_require are not "
                         "plain literals; run the editable install instead")
    lines = list(deps["install_requires"])
    for e in extras:
        if e not in deps["extras_require"]:
            print(f"ops_stamp: setup.py has no extra {e!r}", file=sys.stderr)   # as pip does
        lines += deps["extras_require"].get(e, [])
    out = []
    for line in lines:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            req.marker = None
            if str(req) not in out:
                out.append(str(req))
    return out


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else ""
    if cmd == "check":
        why = check()
        if why:
            print(f"ops_stamp: rebuilding: {why}", file=sys.stderr)
            return 1
        return 0
    if cmd == "begin":
        (ROOT / STAMP).unlink(missing_ok=True)
        (ROOT / PENDING).parent.mkdir(exist_ok=True)
        (ROOT / PENDING).write_text(digest() + "\n")
        return 0
    if cmd == "commit":
        (ROOT / PENDING).replace(ROOT / STAMP)      # atomic: never a half-written stamp
        return 0
    if cmd == "requirements" and len(argv) == 2:
        print("\n".join(requirements([e for e in argv[1].split(",") if e])))
        return 0
    print(f"usage: {sys.argv[0]} check | begin | commit | requirements EXTRA,EXTRA,...",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
