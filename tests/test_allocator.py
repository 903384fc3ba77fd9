"""allocator.py: glibc keeps freed activation pages mapped once a CPU pipeline samples.

Process-wide settings, so each case runs in its own interpreter. What is checked is the
mechanism (page faults of a free-and-reallocate loop, a count, not a timing); the speed-up
it brings is a benchmark figure (docs/PERFORMANCE.md)."""
import os
import platform
import subprocess
import sys

import pytest

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="mallopt settings exist only with glibc on Linux")

# Allocates and touches 24 MiB of 2 MiB tensors, frees them, again and again, and prints the minor page faults of the last 20 rounds.
CHURN = """
import resource, sys, torch
if sys.argv[1] == "pipeline":
    from dsd_fast import DermoSegDiff, get_config, pipeline_from_network
    pipeline_from_network(DermoSegDiff(get_config("tiny"))).denoiser("reference")
from dsd_fast import allocator
print(allocator._state["applied"])
def churn():
    live = [torch.ones(1 << 19) for _ in range(12)]     # 12 x 2 MiB alive at once, as in
    del live                                           # a forward, then all freed
churn()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    churn()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""


def run(mode, **env):
    out = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True,
                         check=True, env={**os.environ, **env}).stdout.split()
    return out[0], int(out[1])


PAGES_TOUCHED = 20 * 12 * (2 << 20) // 4096      # what the timed rounds write: 122,880 pages


@glibc
def test_sampling_on_cpu_keeps_freed_activation_pages_mapped():
    applied, _ = run("bare")
    assert applied == "None"                       # importing the library changes nothing
    applied, faults = run("pipeline")
    assert applied == "True"
    # tuned, the freed blocks come back from the heap: almost no fresh pages. glibc's own
    # dynamic thresholds gave 6,600 or 122,000 faults here (it varies from run to run).
    assert faults < PAGES_TOUCHED / 50, faults


@glibc
def test_the_environment_can_keep_the_system_defaults():
    applied, _ = run("pipeline", DSD_FAST_MALLOC="system")
    assert applied == "False"
