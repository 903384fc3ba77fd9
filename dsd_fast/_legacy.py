"""One-release aliases for the module paths of dsd_fast 0.1 (a flat folder of modules).

`import dsd_fast.model`, `from dsd_fast.batch import discover`, ... keep working and warn
(DeprecationWarning) where the names went. The aliases are plain attribute forwarding to
the new modules; a name that changed its signature (sample_ensemble) is the new one.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

# old module -> the modules its names now live in (looked up in this order)
MOVED = {
    "dsd_fast.model": ("dsd_fast.families.dermosegdiff.reference",),
    "dsd_fast.layers": ("dsd_fast.families.dermosegdiff.layers",),
    "dsd_fast.config": ("dsd_fast.families.dermosegdiff.config", "dsd_fast.preprocess"),
    "dsd_fast.fast": ("dsd_fast.families.dermosegdiff.fast",),
    "dsd_fast.fast_attention": ("dsd_fast.families.dermosegdiff.fast_attention",),
    "dsd_fast.fast_resample": ("dsd_fast.families.fast_resample",),
    "dsd_fast.segmentation": ("dsd_fast.api", "dsd_fast.results",
                              "dsd_fast.diffusion.ensemble"),
    "dsd_fast.graph_sampler": ("dsd_fast.diffusion.graph",),
    "dsd_fast._reference_ops": ("dsd_fast.ops.reference",),
    "dsd_fast.batch": ("dsd_fast.cli.run", "dsd_fast.cli.discover", "dsd_fast.cli.outputs",
                       "dsd_fast.cli.memory", "dsd_fast.cli.errors", "dsd_fast.io"),
    "dsd_fast.report": ("dsd_fast.cli.report",),
    "dsd_fast.visualise": ("dsd_fast.cli.visualise", "dsd_fast.images"),
    "dsd_fast.evaluate": ("dsd_fast.cli.evaluate",),
    "dsd_fast.losses": ("dsd_fast.train.losses",),
    "dsd_fast.data": ("dsd_fast.train.data", "dsd_fast.images"),
}


class _MovedModule(types.ModuleType):
    def __init__(self, name: str, targets: tuple[str, ...]):
        super().__init__(name, f"Moved: see {', '.join(targets)}.")
        self._targets = targets

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        for target in self._targets:
            mod = importlib.import_module(target)
            if hasattr(mod, attr):
                return getattr(mod, attr)
        raise AttributeError(f"{self.__name__}.{attr} is gone; the module moved to "
                             f"{', '.join(self._targets)}")


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        targets = MOVED[spec.name]
        warnings.warn(f"{spec.name} moved to {', '.join(targets)}; the old name is an alias "
                      "for one release", DeprecationWarning, stacklevel=3)
        return _MovedModule(spec.name, targets)

    def exec_module(self, module):
        pass


def install() -> None:
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
