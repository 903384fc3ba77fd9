"""The models a server offers: names, their files' metadata and terms, and loading them.

A request names a model by one of `ModelCatalog.names`, never by a path: the names are
fixed when the server starts (bundled names as they are, a model file by its stem), so no
request can make the server open a file of its choosing.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..api import BUNDLED, model_path
from ..checkpoint import read_metadata

# Metadata keys whose JSON value is shown parsed; the schedule's beta table (1,000 numbers)
# is summarised instead of listed.
_JSON_KEYS = ("config", "preprocessing", "sampler_defaults", "recommended_fast")


@dataclass(frozen=True)
class ModelEntry:
    name: str             # what requests call it
    source: str           # a bundled name or a file path, as configured
    path: Path            # the file it loads from
    sampler_defaults: dict | None = None     # the file's own sampler setting (api.py)
    postprocess_default: str | None = None   # the file's own mask clean-up

    def describe(self) -> dict:
        """The model's public description: family, metadata (JSON fields parsed, the
        schedule summarised) and terms. Reads the file's header only."""
        meta = dict(read_metadata(self.path))
        out: dict = {"name": self.name, "file": self.path.name,
                     "family": meta.pop("family", None),
                     "terms": meta.pop("terms", None) or
                     "not stated in the model file: ask whoever trained it"}
        for key in _JSON_KEYS:
            if key in meta:
                try:
                    meta[key] = json.loads(meta[key])
                except ValueError:
                    pass                      # shown as the text it is
        if "schedule" in meta:
            try:
                sched = json.loads(meta["schedule"])
                meta["schedule"] = {"kind": sched.get("kind"),
                                    "T": len(sched.get("betas", [])) or sched.get("T")}
            except (ValueError, AttributeError):
                meta.pop("schedule")
        out["metadata"] = meta
        return out


class ModelCatalog:
    """The configured models, in order (the first is the default for requests that name
    none). Construction checks every source exists and the names are unique; it loads no
    network (`load_pipelines` does)."""

    def __init__(self, sources):
        self.entries: dict[str, ModelEntry] = {}
        for source in sources:
            source = str(source)
            bundled = source in BUNDLED and not Path(source).exists()
            path = Path(model_path(source))            # FileNotFoundError for a bad name
            if not bundled and not path.is_file():
                raise FileNotFoundError(
                    f"model {source!r}: no such file, and not a bundled model "
                    f"({', '.join(sorted(BUNDLED))})")
            name = source if bundled else path.stem
            if name in self.entries:
                raise ValueError(f"two models would be named {name!r}; rename one file")
            self.entries[name] = ModelEntry(name, source, path, *sampling_defaults(path))

    @property
    def names(self) -> list[str]:
        return list(self.entries)

    @property
    def default_name(self) -> str:
        return self.names[0]

    def describe(self) -> list[dict]:
        return [e.describe() for e in self.entries.values()]

    def load_pipelines(self, device: str = "cpu") -> dict:
        """{name: Pipeline} with every network loaded on `device` (weights only; see
        checkpoint.py)."""
        from ..api import load
        return {name: load(e.path, device=device) for name, e in self.entries.items()}


def sampling_defaults(path: Path) -> tuple[dict | None, str | None]:
    """(sampler_defaults, postprocess default) from a model file's metadata, as a loaded
    Pipeline has them, without loading the network (the Ray ingress has none)."""
    from ..pipeline import postprocess_from, sampler_defaults_from
    meta = read_metadata(path)
    if meta.get("family") == "diffseg":
        return None, None
    return sampler_defaults_from(meta), postprocess_from(meta)
