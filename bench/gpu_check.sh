#!/usr/bin/env bash
# The prepared GPU check (bench/gpu_check.py says what it measures). On a bare NVIDIA machine
# with torch and triton preinstalled and no internet: installs this checkout with --no-deps
# and without the C++ CPU extension (the GPU path does not use it), from a wheelhouse of the
# few pure dependencies when one is given, then runs the check into OUT_DIR.
#
#   bash bench/gpu_check.sh OUT_DIR [WHEELHOUSE]
set -euo pipefail
OUT="${1:?usage: bash bench/gpu_check.sh OUT_DIR [WHEELHOUSE]}"
WHEELS="${2:-}"
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
PY="${PY:-python3}"
if [ -n "$WHEELS" ]; then
  "$PY" -m pip install -q --no-index --find-links "$WHEELS" numpy pillow safetensors scipy tqdm \
    > "$OUT/install.log" 2>&1 || true
fi
DSD_FAST_NO_EXT=1 "$PY" -m pip install -q --no-deps --no-build-isolation -e . >> "$OUT/install.log" 2>&1
TRITON_DEFAULT_FP_FUSION=1 timeout 470 "$PY" bench/gpu_check.py --out "$OUT" --budget-s 420
