# The two set-up commands of the README, as make targets.
PY ?= python3

# torch first (the CPU build; a bare torch requirement would pull a CUDA build), and the
# triton whose CPU interpreter the kernel tests use. --no-build-isolation builds the C++ ops
# against that torch, and sdists with what is installed: setuptools-scm is there for the
# test extra's zipfile-deflate64 (an sdist only), which otherwise builds as version 0.0.0.
# med-seg-diff-pytorch is the MedSegDiff tests' oracle only: --no-deps, because its declared
# torchvision/accelerate/wandb would replace this torch with a CUDA build (it imports only
# torch, einops and beartype).
install:
	$(PY) -m pip install torch==2.13.0 'triton==3.9.*' setuptools wheel setuptools-scm
	$(PY) -m pip install --no-build-isolation --use-pep517 -e '.[test,crf,ray,onnx]'
	$(PY) -m pip install --no-deps med-seg-diff-pytorch==0.3.3 einops beartype

# Main job: segment the bundled PH2 samples with the bundled default model.
demo: install
	$(PY) -m dsd_fast.cli segment dsd_fast/samples -o out/demo

test: install
	$(PY) -m pytest -q tests

.PHONY: install demo test
