"""The model-family interface: what the engine needs to know about a network to load it,
feed it, sample with it and make it fast. Adding a network is adding a folder beside
`dermosegdiff/` whose `__init__` registers one `ModelFamily` (families/__init__.py).

Every mask-diffusion network is called the same way,

    net(x_t, image, t) -> raw output, as the original code's network returns it
        x_t   (B, C_mask, S, S) noisy mask in the family's mask space
        image (B, C_img, S, S)  the preprocessed image (`preprocessing(config)`)
        t     (B,) int64        training step in [0, T-1]

and `prediction(config)` says what that output is: "eps" (noise), "x0" (the clean mask) or
"v"; the samplers convert to noise estimates (diffusion/ensemble.py). Tests, benchmarks and
samplers rely on nothing else.
"""
from __future__ import annotations

import weakref

import torch
from torch import nn

from ..diffusion import Schedule
from ..diffusion.conventions import SamplingConventions
from ..options import Choices
from ..preprocess import Preprocessing


class ModelFamily:
    """Subclass per family; instances are stateless apart from the fast-model cache."""

    name: str = ""                    # registry key, stored in own-format checkpoints
    mask_diffusion: bool = True       # net(x_t, image, t) over a mask, run by a Pipeline
    title: str = ""                   # human name for messages ("DermoSegDiff (MICCAI 2023)")
    config_class: type = object       # frozen dataclass with to_json / from_dict
    signature_keys: tuple = ()        # state-dict keys that identify it (error messages)
    configs: dict = {}                # its named configs ("default", ...): `--config NAME`

    # ------------------------------------------------------------------ networks
    def build_reference(self, config) -> nn.Module:
        """The readable reference network (never imports the fast path or the ops)."""
        raise NotImplementedError

    def build_fast(self, net: nn.Module) -> nn.Module:
        """An inference-only fast copy of a reference network; default: the network itself."""
        return net

    def config_of(self, net: nn.Module):
        return net.config

    def owns(self, net: nn.Module) -> bool:
        """Whether `net` is this family's reference (or fast) network."""
        raise NotImplementedError

    # ------------------------------------------------------------------ diffusion
    def prediction(self, config) -> str:
        """What `net(x_t, image, t)` returns: "eps", "x0" or "v"."""
        return "eps"

    def default_schedule(self, config) -> Schedule:
        raise NotImplementedError

    def sampling_conventions(self, config) -> SamplingConventions:
        """How the original code samples, beyond the schedule (diffusion/conventions.py);
        default: the published DDPM, the plain DDIM grid, no self-conditioning."""
        return SamplingConventions()

    def preprocessing(self, config) -> Preprocessing:
        raise NotImplementedError

    def image_channels(self, config) -> int:
        """How many channels its images have (read from the weights' first convolution
        where a file does not say): 3 for RGB, 1 for grayscale modalities, N for stacks."""
        return 3

    def mask_channels(self, config) -> int:
        """How many mask channels its network denoises: 1 for a binary mask, K for K
        classes (one binary mask each; classes.py says how they become one label map)."""
        return 1

    def eps_network(self, net: nn.Module) -> nn.Module:
        """What the samplers call, given denoiser(backend): the network itself, or an
        adapter where the original's forward returns more than the prediction."""
        return net

    def signed_samples(self, samples: torch.Tensor, config) -> torch.Tensor:
        """Final samples in the family's mask space -> the engine's [-1, 1] (mask > 0)."""
        return samples

    def chain_bytes(self, config) -> int:
        """Rough peak activation bytes of one chain in a forward (sizes batches from memory).
        Default: 12 float32 copies of 256 channels at the input size. Deliberately high."""
        s = self.preprocessing(config).image_size
        return 4 * 12 * 256 * s * s

    # ------------------------------------------------------------------ segmenting
    def segmenter(self, net: nn.Module, schedule: Schedule, preprocessing: Preprocessing,
                  meta: dict | None = None):
        """The segmenter (segmenter.py) of one loaded network; `meta` is its file's metadata
        (own format; {} otherwise). Mask-diffusion families: a Pipeline with the file's
        sampler defaults, mask clean-up, crop, and a zoom's passes and what it leaves
        outside its box."""
        from ..pipeline import Pipeline, postprocess_from, sampler_defaults_from
        from ..pipeline import classes_from, zoom_defaults_from
        meta = meta or {}
        config = self.config_of(net)
        names, nested = classes_from(meta, self.mask_channels(config))
        zoom = zoom_defaults_from(meta, self.choices(config).crops)
        return Pipeline(net, self, schedule, preprocessing, sampler_defaults_from(meta),
                        postprocess_from(meta), names, nested, zoom["crop"],
                        zoom["zoom_outside"], zoom["zoom_passes"], zoom["zoom_boxes"])

    def example_inputs(self, config, batch: int) -> tuple[tuple, tuple[str, ...]]:
        """(arguments, their names) of one network call at `batch` (ONNX export, tests):
        mask-diffusion networks take (x_t, image, t)."""
        s = self.preprocessing(config).image_size
        t = torch.full((batch,), 1, dtype=torch.long)
        c = self.image_channels(config)
        k = self.mask_channels(config)
        return ((torch.randn(batch, k, s, s), torch.rand(batch, c, s, s), t),
                ("x_t", "image", "t"))

    def segmenter_from_file(self, tensors: dict, meta: dict, device="cpu"):
        """A segmenter from an own-format file whose layout is the family's own (e.g. two
        networks in one file), or None when the file is one network (the usual case)."""
        return None

    def choices(self, config) -> Choices:
        """What its segmenters accept beyond the global option checks (options.Choices):
        samplers, fusion rules, refinements, crops. The command line's help lists them."""
        return Choices()

    # ------------------------------------------------------------------ training
    def training_loss(self, net: nn.Module, config, image: torch.Tensor, x0: torch.Tensor,
                      schedule: Schedule, gen: torch.Generator, options) -> tuple:
        """(loss tensor, {name: float}) of one training batch, as the original code trains:
        `net` (maybe under autocast) is a network of `config`; image (B, C, S, S) preprocessed, x0 (B, K, S, S) in [-1, 1] (K = mask_channels), draws from the CPU
        generator `gen`; `options` is the run's TrainOptions."""
        raise NotImplementedError(f"{self.title or self.name} cannot be trained by dsd-fast")

    # ------------------------------------------------------------------ checkpoints
    def recognises(self, state_dict: dict[str, torch.Tensor]) -> bool:
        """Whether a state dict's keys are this family's (key patterns only, no shapes)."""
        raise NotImplementedError

    def state_dict_from(self, obj: dict) -> dict[str, torch.Tensor] | None:
        """The network's state dict inside a loaded file object (a bare state dict, or a
        training checkpoint of the original code), or None when this family sees none."""
        raise NotImplementedError

    def infer_config(self, state_dict: dict[str, torch.Tensor], **settings):
        """The config from tensor shapes; `settings` give what shapes cannot tell."""
        raise NotImplementedError

    def resized_state_dict(self, state_dict: dict[str, torch.Tensor], config, image_size: int):
        """Weights of `config` for the same network at another input size (a warm start of
        a run at another size); only families whose weights allow it override this."""
        raise ValueError(f"{self.title or self.name} weights cannot be moved to another "
                         f"image size")

    def adapted_state_dict(self, state_dict: dict[str, torch.Tensor], source, target) -> dict:
        """Weights of config `source` for a network of config `target` (a warm start of a
        run at another input size or channel count); ValueError where they cannot carry
        over. Default: only an equal config."""
        if source == target:
            return state_dict
        raise ValueError(f"{self.title or self.name} weights of config {source.to_json()} "
                         f"cannot start a network of config {target.to_json()}")

    def settings_from(self, obj: dict) -> dict:
        """Config settings a file of the original code stores beside the weights (e.g. a
        wrapper's schedule buffers), to pass to `infer_config`; default none."""
        return {}

    def schedule_from(self, obj: dict, config) -> Schedule:
        """The schedule stored in a file object of the original code, else the default."""
        return self.default_schedule(config)

    # ------------------------------------------------------------------ fast-model cache
    def fast_model_for(self, net: nn.Module) -> nn.Module:
        """The cached fast copy of `net`, rebuilt whenever the reference weights changed
        (parameter version counters move on every in-place update: optimiser steps, loads)."""
        if getattr(net, "is_fast", False):
            return net
        cache = self.__dict__.setdefault("_fast_cache", weakref.WeakKeyDictionary())
        fp = tuple((p.data_ptr(), p._version) for p in net.parameters())
        hit = cache.get(net)
        if hit is None or hit[0] != fp:
            hit = (fp, self.build_fast(net))
            cache[net] = hit
        return hit[1]

    def __repr__(self) -> str:
        return f"<model family {self.name!r}>"


def plain_state_dict(obj) -> dict[str, torch.Tensor] | None:
    """The tensors of a plain state dict file (guided-diffusion codes save bare state
    dicts), with the `module.` prefix of DataParallel training stripped; None if none."""
    if not isinstance(obj, dict):
        return None
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if any(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items() if k.startswith("module.")}
    return tensors or None
