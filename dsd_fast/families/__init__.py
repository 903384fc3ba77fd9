"""Model families: one folder per network (reference, fast model, checkpoint reading).

    FAMILIES["dermosegdiff"]      DermoSegDiff (Bozorgpour et al., MICCAI 2023 PRIME)
    FAMILIES["medsegdiff"]        MedSegDiff as lucidrains' med-seg-diff-pytorch builds it
    FAMILIES["medsegdiff-official"]  MedSegDiff V2 as its authors' code builds it
    FAMILIES["diffseg"]           DiffSeg (Shuai et al. 2024), two denoisers at t = 0

`get_family(name)`, `family_of_network(net)` and `detect_family(obj)` are how the rest of
the engine finds a family; none of them imports a family's fast path.
"""
from __future__ import annotations

from .base import ModelFamily
from .dermosegdiff import DERMOSEGDIFF
from .diffseg import DIFFSEG
from .medsegdiff import MEDSEGDIFF
from .medsegdiff_official import MEDSEGDIFF_OFFICIAL

FAMILIES: dict[str, ModelFamily] = {f.name: f for f in (DERMOSEGDIFF, MEDSEGDIFF,
                                                        MEDSEGDIFF_OFFICIAL, DIFFSEG)}


def get_family(name: str) -> ModelFamily:
    try:
        return FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown model family {name!r}; known: {sorted(FAMILIES)}") from None


def family_of_network(net) -> ModelFamily:
    for fam in FAMILIES.values():
        if fam.owns(net):
            return fam
    raise TypeError(f"{type(net).__name__} is not a network of a known model family "
                    f"({', '.join(sorted(FAMILIES))}); wrap it in a Pipeline with its family")


def find_config(name: str):
    """(family, config) of a named config of any family ("default", "msd_ph2_64", ...)."""
    from .dermosegdiff import CONFIGS
    from .diffseg import DIFFSEG_CONFIGS
    from .medsegdiff import MSD_CONFIGS
    from .medsegdiff_official import OFFICIAL_CONFIGS
    tables = ((DERMOSEGDIFF, CONFIGS), (MEDSEGDIFF, MSD_CONFIGS),
              (MEDSEGDIFF_OFFICIAL, OFFICIAL_CONFIGS), (DIFFSEG, DIFFSEG_CONFIGS))
    for fam, table in tables:
        if name in table:
            return fam, table[name]
    raise KeyError(f"unknown config {name!r}; known: "
                   f"{sorted(n for _, t in tables for n in t)}")


def detect_family(obj: dict) -> tuple[ModelFamily, dict] | None:
    """(family, state dict) of the first family that recognises a loaded file object."""
    for fam in FAMILIES.values():
        sd = fam.state_dict_from(obj)
        if sd is not None and fam.recognises(sd):
            return fam, sd
    return None


__all__ = ["ModelFamily", "FAMILIES", "get_family", "family_of_network", "detect_family",
           "find_config"]
