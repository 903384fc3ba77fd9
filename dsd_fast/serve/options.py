"""A request's segment() options: read from the form fields and query, checked, resolved.

Resolved means what segment() will actually run: steps, ensemble and spacing from the
model's own sampler setting when the request gives none of them (options.resolve, the rule
of every segment() call), `postprocess="auto"` replaced by the model's clean-up. Two
requests that resolve to the same RequestOptions run the same computation, which is what lets the batcher put their
images into one segment() call.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..options import Choices, resolve
from ..options import SegmentOptions as EngineOptions
from ..diffusion.ddim import SPACINGS
from ..diffusion.ensemble import MAX_SEED
from ..postprocess import METHODS as POSTPROCESS_METHODS
from ..postprocess import resolve_postprocess
from ..results import FUSIONS
from .limits import ApiError

OPTION_FIELDS = ("model", "steps", "ensemble", "seed", "spacing", "postprocess", "tta",
                 "fusion")
OTHER_FIELDS = ("format",)                # how to answer, not what to compute
FORMATS = ("json", "png")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


@dataclass(frozen=True)
class RequestOptions:
    """Everything one segment() call of the batch shares (hashable: the batching key)."""
    model: str
    steps: int
    ensemble: int
    spacing: str
    seed: int = 0
    postprocess: str | None = None        # resolved: None is the published mask
    tta: bool = False
    fusion: str = "mean"

    def segment_kwargs(self) -> dict:
        return {"steps": self.steps, "ensemble": self.ensemble, "spacing": self.spacing,
                "seed": self.seed, "postprocess": self.postprocess or "none",
                "tta": self.tta, "fusion": self.fusion}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["postprocess"] = self.postprocess or "none"
        return d


def _bad(message: str) -> ApiError:
    return ApiError(422, "bad_option", message)


def _int(fields: dict, name: str, lo: int, hi: int) -> int | None:
    raw = fields.get(name)
    if raw is None or raw == "":
        return None
    try:
        v = int(raw)
    except ValueError:
        raise _bad(f"{name} must be an integer in {lo}..{hi}, got {raw!r}") from None
    if not lo <= v <= hi:
        raise _bad(f"{name} must be an integer in {lo}..{hi}, got {v}")
    return v


def _choice(fields: dict, name: str, choices, default):
    raw = fields.get(name)
    if raw is None or raw == "":
        return default
    if raw not in choices:
        raise _bad(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


def parse_options(fields: dict[str, str], catalog, config) -> tuple[RequestOptions, str]:
    """Form/query fields (text) -> (resolved RequestOptions, answer format "json"|"png").
    Unknown fields are refused, so a misspelt option never silently does nothing."""
    unknown = sorted(set(fields) - set(OPTION_FIELDS) - set(OTHER_FIELDS))
    if unknown:
        raise ApiError(400, "unknown_field", f"unknown field(s) {', '.join(unknown)}; this "
                       f"endpoint takes file and {', '.join(OPTION_FIELDS + OTHER_FIELDS)}")
    name = fields.get("model") or catalog.default_name
    if name not in catalog.entries:
        raise ApiError(422, "unknown_model", f"no model {name!r} on this server; it offers "
                       f"{', '.join(catalog.names)} (GET /v1/models)")
    entry = catalog.entries[name]
    steps = _int(fields, "steps", 1, config.max_steps)
    ensemble = _int(fields, "ensemble", 1, config.max_ensemble)
    spacing = _choice(fields, "spacing", SPACINGS, None)
    seed = _int(fields, "seed", 0, MAX_SEED) or 0
    # the model's own setting when none of the three is given (T is checked by the model's
    # own resolve in segment(); the Ray ingress has no network to ask)
    run = resolve(EngineOptions(steps=steps, ensemble=ensemble, spacing=spacing),
                  Choices(T=2 ** 31, sampler_defaults=entry.sampler_defaults))
    steps, ensemble, spacing = run.steps, run.ensemble, run.spacing
    if steps > config.max_steps or ensemble > config.max_ensemble:
        raise _bad(f"the model's own setting ({steps} steps x {ensemble} members) is over "
                   f"this server's limits ({config.max_steps} steps, {config.max_ensemble} "
                   "members): give steps and ensemble")
    post = _choice(fields, "postprocess", ("auto", "none") + POSTPROCESS_METHODS, "auto")
    tta_raw = fields.get("tta", "").strip().lower()
    if tta_raw not in _TRUE + _FALSE:
        raise _bad(f"tta must be true or false, got {fields['tta']!r}")
    fusion = _choice(fields, "fusion", FUSIONS, "mean")
    fmt = _choice(fields, "format", FORMATS, "json")
    opts = RequestOptions(model=name, steps=steps, ensemble=ensemble, spacing=spacing,
                          seed=seed, postprocess=resolve_postprocess(post,
                                                                     entry.postprocess_default),
                          tta=tta_raw in _TRUE, fusion=fusion)
    return opts, fmt
