"""The rules of the package layout, enforced.

- A reference network never imports the fast path, the fused ops or Triton: it must run
  (and segment, backend="reference") in a process where those modules cannot be imported.
- The Triton kernels live inside the package: no top-level `kernels` package, and no code
  in the repository edits sys.path to reach a module.
- Every registered family answers the whole interface.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dsd_fast import FAMILIES

REPO = Path(__file__).resolve().parents[1]

# Imported with these blocked, the reference side of the engine must still work.
BLOCKED = ("dsd_fast.ops", "dsd_fast._C_portable", "dsd_fast._C_avx2", "dsd_fast._C_avx512",
           "triton")
BLOCKED_SUFFIXES = (".fast", ".fast_attention", ".fast_resample")

_SCRIPT = r"""
import importlib.abc, sys

BLOCKED = {blocked!r}
SUFFIXES = {suffixes!r}

def blocked(name):
    return (any(name == b or name.startswith(b + ".") for b in BLOCKED)
            or (name.startswith("dsd_fast.families.") and name.endswith(SUFFIXES)))

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if blocked(name):
            raise ImportError(f"blocked for this test: {{name}}")
        return None

sys.meta_path.insert(0, Block())
import torch
import dsd_fast
from dsd_fast import FAMILIES, pipeline_from_network

from dsd_fast.families.diffseg import DIFFSEG_CONFIGS
from dsd_fast.families.diffseg.pipeline import DiffSegPipeline
from dsd_fast.families.medsegdiff import MSD_CONFIGS
from dsd_fast.families.medsegdiff_official import OFFICIAL_CONFIGS
SMALL = {{"dermosegdiff": dsd_fast.get_config("tiny_ff"),
          "medsegdiff": MSD_CONFIGS["msd_tiny_sc"], "diffseg": DIFFSEG_CONFIGS["diffseg_tiny"],
          "medsegdiff-official": OFFICIAL_CONFIGS["msd_official_tiny"]}}
assert set(SMALL) == set(FAMILIES), "a new family needs a small config here"
for fam in FAMILIES.values():
    net = fam.build_reference(SMALL[fam.name]).eval()
    s = SMALL[fam.name].image_size
    with torch.no_grad():
        if fam.mask_diffusion:
            pipe = pipeline_from_network(net)
            out = net(torch.randn(2, 1, s, s), torch.rand(2, 3, s, s), torch.tensor([3, 200]))
        else:
            pipe = DiffSegPipeline(net, fam.build_reference(SMALL[fam.name]).eval())
            out = net(torch.randn(2, 3, s, s), torch.tensor([0, 200]))
    for o in (out if isinstance(out, tuple) else (out,)):   # official MedSegDiff: (out, cal)
        assert torch.isfinite(o).all()
    steps = {{"steps": 2}} if fam.mask_diffusion else {{}}     # DiffSeg has no sampling loop
    res = pipe.segment(torch.rand(3, 20, 24), ensemble=2, backend="reference", **steps)
    assert res[0].mask.shape == (20, 24)
leaked = sorted(m for m in sys.modules if blocked(m))
assert not leaked, leaked
print("reference ok:", ", ".join(FAMILIES))
"""


def test_reference_networks_run_with_the_fast_path_blocked():
    script = _SCRIPT.format(blocked=BLOCKED, suffixes=BLOCKED_SUFFIXES)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "reference ok: dermosegdiff, medsegdiff, medsegdiff-official, diffseg" in proc.stdout


def test_the_block_really_blocks():
    """The same script with a reference module that imports the ops must fail: otherwise
    the test above would pass whatever the reference imported."""
    script = _SCRIPT.format(blocked=BLOCKED, suffixes=BLOCKED_SUFFIXES).replace(
        "import dsd_fast\n", "import dsd_fast\nimport dsd_fast.families.dermosegdiff.fast\n", 1)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode != 0 and "blocked for this test" in proc.stderr


def _python_files():
    for folder in ("dsd_fast", "tests", "bench"):
        yield from (REPO / folder).rglob("*.py")


def test_no_top_level_kernels_package_and_no_sys_path_edits():
    assert not (REPO / "kernels").exists(), "the Triton kernels live in dsd_fast/ops/triton"
    edits = [f"{p.relative_to(REPO)}:{i}" for p in _python_files()
             for i, line in enumerate(p.read_text().splitlines(), 1)
             if re.search(r"sys\.path\.(insert|append)", line)]
    assert not edits, f"sys.path edited at {edits}"


def small_network(name: str):
    from conftest import make_model
    return make_model({"dermosegdiff": "tiny_ff", "medsegdiff": "msd_tiny_sc",
                       "diffseg": "diffseg_tiny", "medsegdiff-official": "msd_official_tiny"}[name])


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_answers_the_interface(name):
    fam = FAMILIES[name]
    net = small_network(name)
    assert fam.owns(net) and fam.config_of(net) is net.config
    assert not any(other.owns(net) for other in FAMILIES.values() if other is not fam)
    config = fam.config_of(net)
    assert fam.prediction(config) in ("eps", "x0", "v")
    assert fam.default_schedule(config).T >= 1
    assert fam.preprocessing(config).image_size >= 1 and fam.chain_bytes(config) > 0
    sd = net.state_dict()
    assert fam.recognises(sd) and fam.state_dict_from(sd) is not None
    # what shapes cannot tell is a setting (the tiny DermoSegDiff uses 4 groups, not 8)
    settings = {"dermosegdiff": {"resnet_block_groups": 4}, "medsegdiff": {},
                "diffseg": {"image_size": config.image_size},
                "medsegdiff-official": {"image_size": config.image_size, "num_heads": 1,
                                        "timesteps": 1000}}[name]
    assert fam.infer_config(sd, **settings).to_dict() == config.to_dict()
    fast = fam.fast_model_for(net)
    assert fam.fast_model_for(net) is fast                     # cached
    conv = fam.sampling_conventions(config)
    assert conv.ddpm in ("published", "clipped", "learned_range")
    s = config.image_size
    if fam.mask_diffusion:
        args = (torch.randn(2, 1, s, s), torch.rand(2, 3, s, s), torch.tensor([1, 100]))
    else:                       # an image denoiser called at t = 0 only
        args = (torch.randn(2, 3, s, s), torch.tensor([0, 0]))
    with torch.no_grad():
        torch.testing.assert_close(fast(*args), net(*args), rtol=1e-4, atol=1e-4)
