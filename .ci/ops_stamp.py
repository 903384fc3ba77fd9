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
                                      the installed package's requirements for the
                                      comma-separated EXTRAS, one a line (for `pip install`:
                                      dependencies added or removed by hand come back without
                                      a rebuild)

The digest covers what the built modules depend on: csrc/* (names and bytes), setup.py (the
extensions' flags live there; an edit of its extras also rebuilds once, which is safe), the
torch build (version and git hash: the ops link against its ABI), the python version and the
environment variables the build reads. The stamp lives in build/ (ignored by git), so a fresh
clone has none and builds everything.
"""
from __future__ import annotations

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


def digest(root: Path = ROOT) -> str:
    """sha256 over the ops' sources, setup.py, the torch build, python and the build env."""
    import torch
    h = hashlib.sha256()
    files = sorted(p for p in (root / "csrc").rglob("*") if p.is_file())
    for p in [*files, root / "setup.py"]:
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
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
        return "the ops' sources, setup.py, torch or python changed since the last build"
    return editable_here(root) or ops_import()


def requirements(extras: list[str]) -> list[str]:
    """The installed dsd_fast's requirements whose markers hold for these extras."""
    from importlib import metadata
    try:
        from packaging.requirements import Requirement
    except ImportError:                     # pip always carries a copy
        from pip._vendor.packaging.requirements import Requirement
    out = []
    for line in metadata.requires("dsd_fast") or []:
        req = Requirement(line)
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras):
            req.marker = None
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
    print(f"usage: {sys.argv[0]} check | begin | commit | requirements EXTRA,EXTRA,...", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
