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

import numpy as np
import torch

BENCH = Path(__file__).resolve().parent

# One ensemble of the CLASSIC setting: every forward benchmark runs 5 chains of one image.
BATCH = 5
# Timed rounds after one warm-up round (which also builds the fast model); one call each
# under --benchmark-disable.
FORWARD_ROUNDS = 3
SEGMENT_ROUNDS = 2
# How far from the reference output an engine may be (errors() below). The fast model and the
# float32 peers reorder float32 sums (Winograd, fused kernels): max_error <= ~1e-4 measured on
# these cases. bfloat16 keeps 8 bits of mantissa: l2_error 0.005-0.045 measured.
FLOAT32_TOLERANCE = 1e-3          # on max_error
BF16_TOLERANCE = 0.1              # on l2_error
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


def perturbed(net: torch.nn.Module, seed: int | None = 0,
              scale: float = 0.05) -> torch.nn.Module:
    """Random weights moved off their initial values (zero-initialised layers included): scale
    * N(0, 1) added to each parameter, drawn from a generator seeded with seed, or (seed None)
    from torch's global generator, continuing from whatever built net; eval mode."""
    g = None if seed is None else torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return net.eval()


def perturbed_network(config: str, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """The reference network of a named config of any family, built right after
    torch.manual_seed(seed), its weights then moved on the same generator (perturbed, seed
    None): a small model whose outputs are not all 0, for the bench tools' tests."""
    from dsd_fast.families import find_config
    fam, cfg = find_config(config)
    torch.manual_seed(seed)
    return perturbed(fam.build_reference(cfg), None, scale)


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


def outputs(out) -> list[torch.Tensor]:
    """A network's or a peer's output(s) as a list of float32 tensors (official MedSegDiff
    returns the prediction and its anchor's calibration map)."""
    items = list(out) if isinstance(out, (tuple, list)) else [out]
    return [torch.as_tensor(np.asarray(o), dtype=torch.float32) if not torch.is_tensor(o)
            else o.float() for o in items]


def errors(got, want) -> dict[str, float]:
    """How far an engine's outputs are from the reference's, the worst output of each:
    max_error = max |got - want| / max |want| (float32 engines: reordered sums only) and
    l2_error = ||got - want|| / ||want|| (bfloat16: its rounding, ~1e-2, leaves a few pixels
    of a saturated map, e.g. official MedSegDiff's calibration sigmoid, further off)."""
    got, want = outputs(got), outputs(want)
    assert len(got) == len(want), f"{len(got)} outputs, the reference has {len(want)}"
    return {"max_error": max(float((g - w).abs().max() / w.abs().max())
                             for g, w in zip(got, want)),
            "l2_error": max(float((g - w).norm() / w.norm()) for g, w in zip(got, want))}


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
