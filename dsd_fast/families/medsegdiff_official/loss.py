"""The official MedSegDiff code's training loss (training_losses_segmentation), for
`dsd-fast train`: eps-MSE + the variational-bound term through the variance channel + 10 x
MSE(cal, mask)."""
from __future__ import annotations

import math

import torch

from ...diffusion.ddpm import learned_range_tables
from ...diffusion.training import draw_t_and_noise

CAL_WEIGHT = 10.0        # train_util.forward_backward: loss * weights + loss_cal * 10


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) per element, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_normal_cdf(x):
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_nll(x, means, log_scales):
    """-log P(x) per element (nats) of a Gaussian discretised to 255 bins of [-1, 1], the
    edge bins open (guided-diffusion's decoder term; x here is the {0, 1} mask)."""
    centred = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = _approx_normal_cdf(inv_std * (centred + 1.0 / 255.0))
    cdf_min = _approx_normal_cdf(inv_std * (centred - 1.0 / 255.0))
    log_cdf_plus = cdf_plus.clamp(min=1e-12).log()
    log_one_minus_cdf_min = (1.0 - cdf_min).clamp(min=1e-12).log()
    log_delta = (cdf_plus - cdf_min).clamp(min=1e-12).log()
    return -torch.where(x < -0.999, log_cdf_plus,
                        torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def official_medsegdiff_terms(model, image: torch.Tensor, x0: torch.Tensor, t: torch.Tensor,
                              noise: torch.Tensor, schedule) -> dict[str, torch.Tensor]:
    """Per-sample terms of `training_losses_segmentation` (medsegdiff.md 2.8), learned-range
    variance, eps objective:
        res = [mask > 0] in {0, 1} (x0 here is the engine's [-1, 1] mask: x0 > -1)
        x_t = sqrt(abar_t) res + sqrt(1 - abar_t) noise;   (out, cal) = model(x_t, image, t)
        loss_diff = mean (noise - out[:, 0])^2
        vb = KL(q(x_{t-1} | x_t, res) || p(x_{t-1} | x_t)) / log 2, the model's mean from the
             detached eps and unclipped x0 (only the variance channel learns from it);
             at t = 0 the discretised-Gaussian NLL of res instead
        loss_cal = mean (res - cal)^2
    Tables are float64 gathered and cast to float32, as the original's _extract_into_tensor."""
    b = x0.shape[0]
    tab = learned_range_tables(schedule)
    ac = schedule.alphas_cumprod
    tab["sqrt_ac"], tab["sqrt_1m_ac"] = ac.sqrt(), (1 - ac).sqrt()
    at = {k: v.to(x0.device)[t].float().view(b, 1, 1, 1) for k, v in tab.items()}
    res = (x0 > -1).to(x0.dtype)
    x_t = at["sqrt_ac"] * res + at["sqrt_1m_ac"] * noise
    out, cal = model(x_t, image, t)
    eps, v = out[:, :1], out[:, 1:2]
    true_mean = at["coef1"] * res + at["coef2"] * x_t
    x0_hat = at["sqrt_recip_ac"] * x_t - at["sqrt_recipm1_ac"] * eps.detach()
    model_mean = at["coef1"] * x0_hat + at["coef2"] * x_t
    frac = (v + 1) / 2
    model_log_var = frac * at["max_log"] + (1 - frac) * at["min_log"]
    dims = tuple(range(1, x0.dim()))
    kl = normal_kl(true_mean, at["min_log"], model_mean, model_log_var).mean(dims)
    nll = discretized_gaussian_nll(res, model_mean, 0.5 * model_log_var).mean(dims)
    vb = torch.where(t == 0, nll, kl) / math.log(2.0)
    loss_diff = ((noise - eps) ** 2).mean(dims)
    loss_cal = ((res - cal) ** 2).mean(dims)
    return {"loss_diff": loss_diff, "vb": vb, "loss_cal": loss_cal, "loss": loss_diff + vb}


def official_medsegdiff_loss(model, image: torch.Tensor, x0: torch.Tensor, schedule,
                             gen: torch.Generator) -> tuple[torch.Tensor, dict]:
    """The official training step's loss: t ~ U{0..T-1} (its uniform schedule sampler),
    mean over the batch of loss_diff + vb + 10 loss_cal. The model trains in train mode, as
    theirs: batch statistics in the anchor's BatchNorms and Dropout2d(0.5) in its encoder."""
    t, noise = draw_t_and_noise(gen, 0, schedule.T, x0)
    terms = official_medsegdiff_terms(model, image, x0, t, noise, schedule)
    loss = (terms["loss"] + CAL_WEIGHT * terms["loss_cal"]).mean()
    parts = {k: v.mean().item() for k, v in terms.items() if k != "loss"}
    return loss, {**parts, "loss": loss.item()}
