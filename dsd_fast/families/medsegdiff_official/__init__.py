"""MedSegDiff as its authors' code builds it (ImprintLab/MedSegDiff, formerly WuJunde and
KidsWithTokens; MIT; Wu et al., MIDL 2023 / MedSegDiff-V2, AAAI 2024): the guided-diffusion
UNet with the anchor network of V2.

    config.py       OfficialMSDConfig (the script's flags), OFFICIAL_CONFIGS
    layers.py       guided-diffusion blocks (ResBlock, attention, up/down sampling)
    anchor.py       the anchor network (nnU-Net-style encoder/decoder, eval-mode BatchNorm)
    reference.py    the V2 network, net(x_t, image, t) -> (out, cal) as the original returns
    checkpoint.py   savedmodel*.pt / emasavedmodel*.pt; config from shapes + named settings
    sampling.py     its schedule, its DDPM's learned range, cal_out, its "staple"
    fast.py         the fast model (fused GroupNorm+SiLU, SDPA attention, folded BatchNorm)

The engine samples through `OfficialDenoiser` (eps = output channel 0, anchor computed once
per image); sampler="ddpm" runs its learned-range DDPM, "ddim" and "dpmpp" the fast ones.
"""
from __future__ import annotations

from ...diffusion.conventions import SamplingConventions
from ...preprocess import Preprocessing
from ..base import ModelFamily
from . import checkpoint as _ckpt
from .config import OFFICIAL_CONFIGS, OfficialMSDConfig
from .reference import OfficialMedSegDiff, build_official_medsegdiff
from .sampling import OfficialDenoiser, official_schedule


class OfficialMedSegDiffFamily(ModelFamily):
    name = "medsegdiff-official"
    title = "MedSegDiff (official code, V2)"
    config_class = OfficialMSDConfig
    configs = OFFICIAL_CONFIGS
    signature_keys = _ckpt.SIGNATURE_KEYS

    def training_loss(self, net, config, image, x0, schedule, gen, options):
        from .loss import official_medsegdiff_loss
        return official_medsegdiff_loss(net, image, x0, schedule, gen)

    def image_channels(self, config) -> int:
        return config.in_channels - 1          # its input is the image stacked with x_t

    def mask_channels(self, config) -> int:
        return 1                               # its code denoises one mask channel

    def build_reference(self, config: OfficialMSDConfig) -> OfficialMedSegDiff:
        return OfficialMedSegDiff(config)

    def build_fast(self, net):
        from .fast import build_fast_model      # the fast path imports the ops: only here
        return build_fast_model(net)

    def owns(self, net) -> bool:
        return isinstance(net, (OfficialMedSegDiff, OfficialDenoiser)) or \
            getattr(net, "family_name", "") == self.name

    def eps_network(self, net):
        return net if isinstance(net, OfficialDenoiser) else OfficialDenoiser(net)

    def signed_samples(self, samples, config):
        return samples * 2 - 1             # mask space {0, 1} -> the engine's [-1, 1]

    def default_schedule(self, config: OfficialMSDConfig):
        return official_schedule(config.timesteps, config.noise_schedule)

    def sampling_conventions(self, config: OfficialMSDConfig) -> SamplingConventions:
        return SamplingConventions(ddpm="learned_range" if config.learn_sigma else "clipped")

    def preprocessing(self, config: OfficialMSDConfig) -> Preprocessing:
        # its ISIC loader: Resize((S, S)) then ToTensor(): [0, 1], no normalisation
        return Preprocessing(image_size=config.image_size, resize="bilinear", normalise="none")

    def chain_bytes(self, config: OfficialMSDConfig) -> int:
        s, w = config.image_size, config.widths
        per = sum(3 * c * (s >> i) ** 2 for i, c in enumerate(w)) + 3 * 480 * (s // 32) ** 2
        return 4 * 12 * per

    def recognises(self, state_dict) -> bool:
        return _ckpt.recognises(state_dict)

    def state_dict_from(self, obj):
        return _ckpt.state_dict_from(obj)

    def infer_config(self, state_dict, **settings) -> OfficialMSDConfig:
        return _ckpt.infer_config(state_dict, **settings)


MEDSEGDIFF_OFFICIAL = OfficialMedSegDiffFamily()

__all__ = ["MEDSEGDIFF_OFFICIAL", "OfficialMedSegDiffFamily", "OfficialMedSegDiff",
           "OfficialMSDConfig", "OFFICIAL_CONFIGS", "build_official_medsegdiff",
           "OfficialDenoiser", "official_schedule"]
