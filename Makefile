# The two set-up commands of the README, as make targets.
PY ?= python3

# torch first (the CPU build; a bare torch requirement would pull a CUDA build), and the
# triton whose CPU interpreter the kernel tests use. --no-build-isolation builds the C++ ops
# against that torch, and sdists with what is installed: setuptools-scm is there for the
# test extra's zipfile-deflate64 (an sdist only), which otherwise builds as version 0.0.0.
# med-seg-diff-pytorch is the MedSegDiff tests' oracle only: --no-deps, because its declared
# torchvision/accelerate/wandb would replace this torch with a CUDA build (it imports only
# torch, einops and beartype).
# The editable install rebuilds the C++ ops (three ISA builds, ~4 minutes on 2 cores), so it
# runs only when .ci/ops_stamp.py says the build is not current: csrc/*, setup.py (less its
# dependency lists), torch or python changed, the tree is not the installed one, or the
# modules do not import (a fresh clone: no stamp, everything builds). Otherwise pip installs
# only what setup.py requires for EXTRAS and is missing (a new extra needs no rebuild).
EXTRAS = test,crf,ray,onnx,serve,volumes
install:
	$(PY) -m pip install torch==2.13.0 'triton==3.9.*' setuptools wheel setuptools-scm
	@if $(PY) .ci/ops_stamp.py check; then \
		echo "C++ ops current (.ci/ops_stamp.py): dependencies only, no rebuild"; \
		$(PY) .ci/ops_stamp.py requirements $(EXTRAS) > build/requirements.txt && \
		$(PY) -m pip install -r build/requirements.txt; \
	else \
		echo "$(PY) -m pip install --no-build-isolation --use-pep517 -e '.[$(EXTRAS)]'" && \
		$(PY) .ci/ops_stamp.py begin && \
		$(PY) -m pip install --no-build-isolation --use-pep517 -e '.[$(EXTRAS)]' && \
		$(PY) .ci/ops_stamp.py commit; \
	fi
	$(PY) -m pip install --no-deps med-seg-diff-pytorch==0.3.3 einops beartype

# Main job: segment the bundled PH2 samples with the bundled default model.
demo: install
	$(PY) -m dsd_fast.cli segment dsd_fast/samples -o out/demo

# The test suite, then each throughput benchmark once as a test (no timing).
test: install
	$(PY) -m pytest -q tests
	$(PY) -m pytest -q bench --benchmark-disable

# Throughput on pytest-benchmark (bench/test_*.py): per family the denoiser's forward
# (reference, fast, bf16, ONNX Runtime and OpenVINO where installed) and segment() per image.
# Each run is saved as JSON under .benchmarks/ (ignored by git). Compare with the last saved
# run: make bench BENCH_ARGS=--benchmark-compare (or =0001 for a given one); saved runs side
# by side: pytest-benchmark compare .benchmarks/*/*.json
# `make bench` also installs the bench extra (ONNX Runtime, OpenVINO: the peers), and
# `python bench/bench_table.py` prints the newest run as the README's speed table.
BENCH_ARGS ?=
bench: EXTRAS := $(EXTRAS),bench
bench: install
	$(PY) -m pytest bench --benchmark-only --benchmark-autosave \
		--benchmark-columns=min,median,max,stddev,rounds $(BENCH_ARGS)

.PHONY: install demo test bench
