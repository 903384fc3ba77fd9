#!/usr/bin/env bash
# Issue #15's last part on a lent GPU, in one device call: train the small official V2
# (msd_official_64) on a packed copy of PH2 + HAM10000, then Dice against sampler and steps
# (bench/msd_official_steps.py: the official DDPM-1000, DDIM and DPM-Solver++(2M) at 10, 25,
# 50) on the pack's first 10 PH2 + 10 HAM10000 val images (the issue asks for >= 20). The
# trained weights (141 MB) are over what a device call brings back, so both happen there
# and only logs and figures return.
#
# Here, once:   python bench/pack_data.py .gpu_data && echo /.gpu_data/ >> .git/info/exclude
# There:        device run, carry [".gpu_data"], timeout_s 600:
#                 bash bench/gpu_msd_official.sh "$OUT"
# Knobs (environment): TRAIN_S (seconds of training, default 240), STEPS (the cosine
# schedule's length, default 20000), BATCH (32), ENSEMBLE (5), ROWS, LIMIT (val images per
# source, 10), DEVICE (cuda; "cpu" with tiny settings checks the script here:
#   DEVICE=cpu TRAIN_S=400 STEPS=2 VAL_EVERY=2 BATCH=2 LIMIT=1 ENSEMBLE=1 ROWS=ddim:2 ...).
# Budget: the DDPM row is 1,000 network calls per image; at an unmeasured ~10 ms each on
# the GPU, 20 images take ~4 min beside the 4 min of training. steps.json is rewritten after
# every image, so a run cut at the device call's limit still brings back what it did.
# Training stops at TRAIN_S whatever the step; best.safetensors is its last validation's
# EMA (every 1000 steps), so the report names the step it was taken at (run/log.jsonl).
set -euo pipefail
OUT="${1:?usage: bash bench/gpu_msd_official.sh OUT_DIR}"
cd "$(dirname "$0")/.."
D=.gpu_data
if [ ! -d "$D/ph2" ] || [ ! -d "$D/ham10000" ]; then
  echo "no $D: run bench/pack_data.py $D here first" >&2
  exit 2
fi
PY="${PY:-python3}"
DEVICE="${DEVICE:-cuda}"
TRAIN_S="${TRAIN_S:-240}"
LIMIT="${LIMIT:-10}"
mkdir -p "$OUT"
# no install: the checkout on PYTHONPATH (its imports, numpy, pillow, scipy, safetensors and
# tqdm, are in the GPU image; the C++ CPU ops are not needed on CUDA)
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
{ nvidia-smi || true; } > "$OUT/machine.txt" 2>&1
src() {  # one --source argument for the packed folder $1 with sampling weight $2
  local d="$D/$1"
  echo "name=$1,images=$d/images,masks=$d/masks,train=$d/train.txt,val=$d/val.txt,weight=$2"
}
set +e
timeout "$TRAIN_S" "$PY" -m dsd_fast.cli.main train --source "$(src ph2 0.4)" \
  --source "$(src ham10000 0.6)" --augment strong --out "$OUT/run" --config msd_official_64 \
  --steps "${STEPS:-20000}" --batch-size "${BATCH:-32}" --lr 3e-4 --lr-schedule cosine \
  --val-every "${VAL_EVERY:-1000}" --device "$DEVICE" --precision bf16 -q \
  > "$OUT/train.log" 2>&1
echo "train exit $? (124: stopped at TRAIN_S=$TRAIN_S s, as planned)" >> "$OUT/train.log"
set -e
[ -f "$OUT/run/best.safetensors" ] || { echo "no validated weights: train longer" >&2; exit 3; }
"$PY" bench/msd_official_steps.py --checkpoint "$OUT/run/best.safetensors" --data "$D" \
  --device "$DEVICE" --ph2-limit "$LIMIT" --ham-limit "$LIMIT" --ensemble "${ENSEMBLE:-5}" \
  --rows "${ROWS:-ddpm,ddim:10,ddim:25,ddim:50,dpmpp:10,dpmpp:25,dpmpp:50}" \
  --out "$OUT/steps.json" > "$OUT/steps.log" 2>&1
"$PY" bench/msd_official_steps.py --merge "$OUT/steps.json" | sed -n '/^| sampler/,$p' \
  > "$OUT/steps_table.md"
cp "$OUT/run/log.jsonl" "$OUT/train_log.jsonl"
rm -rf "$OUT/run"                      # last.pt and best.safetensors: too large to come back
cat "$OUT/steps_table.md"
