"""Model families: one folder per network (reference, fast model, checkpoint reading, loss),
registered here by name.

    FAMILIES["dermosegdiff"]      DermoSegDiff (Bozorgpour et al., MICCAI 2023 PRIME)
    FAMILIES["medsegdiff"]        MedSegDiff as lucidrains' med-seg-diff-pytorch builds it
    FAMILIES["medsegdiff-official"]  MedSegDiff V2 as its authors' code builds it
    FAMILIES["diffseg"]           DiffSeg (Shuai et al. 2024), two denoisers at t = 0

A new family is a folder (or any module) whose ModelFamily instance is passed to
`register(family)`; nothing else in the engine names it. `get_family(name)`,
`family_of_network(net)`, `detect_family(obj)` and `find_config(name)` are how the rest of
the engine finds a family; none of them imports a family's fast path.
"""
from __future__ import annotations

from .base import ModelFamily

FAMILIES: dict[str, ModelFamily] = {}


def register(family: ModelFamily) -> ModelFamily:
    """Make `family` known by its name (loading, detection, `--config` names). Registering
    another instance under a taken name replaces it (a test's toy family, a reload)."""
    if not isinstance(family, ModelFamily) or not family.name:
        raise TypeError(f"register() takes a ModelFamily with a name, got {family!r}")
    FAMILIES[family.name] = family
    return family


def unregister(name: str) -> None:
    FAMILIES.pop(name, None)


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
    for fam in FAMILIES.values():
        if name in fam.configs:
            return fam, fam.configs[name]
    raise KeyError(f"unknown config {name!r}; known: "
                   f"{sorted(n for f in FAMILIES.values() for n in f.configs)}")


def detect_family(obj: dict) -> tuple[ModelFamily, dict] | None:
    """(family, state dict) of the first family that recognises a loaded file object."""
    for fam in FAMILIES.values():
        sd = fam.state_dict_from(obj)
        if sd is not None and fam.recognises(sd):
            return fam, sd
    return None


def _register_builtin() -> None:
    # The families this package ships, in detection order.
    from .dermosegdiff import DERMOSEGDIFF
    from .diffseg import DIFFSEG
    from .medsegdiff import MEDSEGDIFF
    from .medsegdiff_official import MEDSEGDIFF_OFFICIAL
    for fam in (DERMOSEGDIFF, MEDSEGDIFF, MEDSEGDIFF_OFFICIAL, DIFFSEG):
        register(fam)


_register_builtin()

__all__ = ["ModelFamily", "FAMILIES", "register", "unregister", "get_family",
           "family_of_network", "detect_family", "find_config"]
