"""What the throughput benchmarks (bench/test_*.py, pytest-benchmark) run, one case per family.

One network per family, at the size its segment() runs: the two bundled models
(DermoSegDiff's default, lucidrains-style MedSegDiff) with their weights, and a small config of
the two families without a bundled model (official MedSegDiff V2 at 64 px, DiffSeg's published
widths at 64 px) with random weights moved off their initial values (zero-initialised output
layers would otherwise make every output 0, and the error checks meaningless). The threads are
torch's (OMP_NUM_THREADS); machine_info in the saved JSON records them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent

# One ensemble of the CLASSIC setting: every forward benchmark runs 5 chains of one image.
BATCH = 5
# Timed rounds after one warm-up round (which also builds the fast model); one call each
# under --benchmark-disable.
FORWARD_ROUNDS = 5
SEGMENT_ROUNDS = 3
# Max error as a fraction of the output's scale. The fast model and the float32 peers reorder
# float32 sums (Winograd, fused kernels); bfloat16 keeps 8 bits of mantissa.
FLOAT32_TOLERANCE = 1e-3
BF16_TOLERANCE = 0.1
SAMPLE_IMAGE = BENCH.parent / "dsd_fast" / "samples" / "IMD009.png"


@dataclass
class FamilyCase:
    """A network of one family, its inputs at batch BATCH, and its pipeline."""
    name: str
    net: torch.nn.Module          # the reference network, eval mode
    family: object                # dsd_fast.families.ModelFamily
    inputs: tuple                 # the network's positional inputs, batch BATCH
    pipeline: object              # what segment() runs (Pipeline / DiffSegPipeline)
    segment_kwargs: dict          # the segment() setting benchmarked per image
    weights: str                  # "bundled" or "random"


def perturbed(net: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Random weights moved off their initial values (zero-initialised layers included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return net.eval()


def _dermosegdiff():
    import dsd_fast
    pipe = dsd_fast.load()
    # the bundled weights' own setting (25 members x 5 trailing DDIM steps)
    return pipe.model, pipe, {}, "bundled"


def _medsegdiff():
    import dsd_fast
    pipe = dsd_fast.load("medsegdiff")
    return pipe.model, pipe, {}, "bundled"


def _medsegdiff_official():
    from dsd_fast.api import as_pipeline
    from dsd_fast.families import find_config
    fam, cfg = find_config("msd_official_64")
    torch.manual_seed(0)
    net = perturbed(fam.build_reference(cfg))
    # random weights have no measured setting: 5 DDIM steps x 5 members keeps a CI run short
    return net, as_pipeline(net), {"steps": 5, "ensemble": 5}, "random"


def _diffseg():
    from dsd_fast.families import find_config
    from dsd_fast.families.diffseg.pipeline import DiffSegPipeline
    fam, cfg = find_config("diffseg_published")
    cfg = cfg.replace(image_size=64)
    torch.manual_seed(0)
    have, no = perturbed(fam.build_reference(cfg), 0), perturbed(fam.build_reference(cfg), 1)
    # one t = 0 forward of each network per draw: 5 draws per image
    return have, DiffSegPipeline(have, no), {"ensemble": 5}, "random"


BUILDERS = {"dermosegdiff": _dermosegdiff, "medsegdiff": _medsegdiff,
            "medsegdiff-official": _medsegdiff_official, "diffseg": _diffseg}
FAMILY_NAMES = list(BUILDERS)


def relative_error(got, want: torch.Tensor) -> float:
    """max |got - want| as a fraction of the output's scale (max |want|)."""
    got = torch.as_tensor(got, dtype=torch.float32)
    return float((got - want).abs().max() / want.abs().max())


def build_case(name: str) -> FamilyCase:
    """The FamilyCase of one family (FAMILY_NAMES)."""
    from bench_peers import inputs

    from dsd_fast.families import family_of_network
    net, pipe, kwargs, weights = BUILDERS[name]()
    fam = family_of_network(net)
    return FamilyCase(name, net, fam, inputs(net, fam, BATCH), pipe, kwargs, weights)


def label(benchmark, case: FamilyCase, group: str) -> None:
    """The benchmark's group and what the saved JSON records of the case."""
    benchmark.group = group
    benchmark.extra_info.update(family=case.name, weights=case.weights,
                                input_shape=list(case.inputs[0].shape))
