#!/usr/bin/env bash
# Install dsd_fast beside a torch that is already installed, as a CUDA user would, and test it.
#
#   bash bench/install_check.sh PYTHON [TESTS...]
#
# PYTHON: the interpreter of an environment that already has torch (any version from the
# oldest this package supports, 2.4). The checkout's tracked files are copied to a scratch
# folder (nothing is built in the checkout), installed with --no-build-isolation (the C++ ops
# are compiled against that torch), then: torch must be the same version as before (pip must
# not replace a user's torch), the extension must load, and the given tests (default: a
# quick subset) must pass. Prints one line per check; exit status non-zero on any failure.
# Measured runs are listed in README.md ("What was verified where").
set -euo pipefail
PY=${1:?usage: install_check.sh PYTHON [TESTS...]}
shift
TESTS=("$@")
[ ${#TESTS[@]} -gt 0 ] || TESTS=(tests/ops/test_cpu_ops.py tests/test_api.py tests/diffusion tests/families/test_medsegdiff_official.py)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/dsd_install_check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
(cd "$ROOT" && git ls-files -z | xargs -0 tar cf - ) | (mkdir -p "$WORK/src" && tar xf - -C "$WORK/src")
before=$("$PY" -c "import torch; print(torch.__version__)")
echo "python: $("$PY" -c 'import sys; print(sys.version.split()[0])'), torch before: $before"
"$PY" -m pip install -q setuptools wheel
# the runtime requirements only, as a user installs it, plus pytest (the test extra's oracles,
# e.g. isic-challenge-scoring, do not install on every Python; the default tests skip them)
(cd "$WORK/src" && "$PY" -m pip install -q --no-build-isolation --use-pep517 -e . && "$PY" -m pip install -q pytest)
after=$("$PY" -c "import torch; print(torch.__version__)")
[ "$before" = "$after" ] || { echo "FAIL: pip replaced torch $before with $after"; exit 1; }
echo "ok: torch kept at $after"
(cd "$WORK/src" && "$PY" -c "
from dsd_fast import ops
assert ops.AVAILABLE, 'the C++ extension did not load'
print('ok: C++ extension loaded')")
(cd "$WORK/src" && "$PY" -m pytest -q -p no:cacheprovider "${TESTS[@]}")
echo "ok: tests passed"
