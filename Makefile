# The two set-up commands of the README, as make targets.
PY ?= python3

# --no-build-isolation builds sdists with what is installed: setuptools-scm is there for the
# test extra's zipfile-deflate64 (an sdist only), which otherwise builds as version 0.0.0 and
# is rejected.
install:
	$(PY) -m pip install torch==2.13.0 setuptools wheel setuptools-scm
	$(PY) -m pip install --no-build-isolation --use-pep517 -e '.[test,crf]'

# Main job: segment the bundled PH2 samples with the bundled default model.
demo: install
	$(PY) -m dsd_fast.cli segment dsd_fast/samples -o out/demo

test: install
	$(PY) -m pytest -q tests

.PHONY: install demo test
