"""med-seg-diff-pytorch's training loss (its p_losses), for `dsd-fast train`."""
from __future__ import annotations

import torch

from ...diffusion.training import draw_t_and_noise


def medsegdiff_loss(model, image: torch.Tensor, x0: torch.Tensor, schedule, objective: str,
                    self_condition: bool, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
    """med-seg-diff-pytorch's p_losses: t ~ U{0..T-1} (t = 0 included), x_t from fresh noise,
    plain MSE against the objective's target (noise, x0, or v = sqrt(abar) eps -
    sqrt(1 - abar) x0). Self-conditioned models see, half of the time (a coin per batch),
    their own no-grad x0 estimate at the same x_t, unclamped, as the package does."""
    t, noise = draw_t_and_noise(gen, 0, schedule.T, x0)
    x_t = schedule.q_sample(x0, t, noise)
    ac = schedule.alphas_cumprod.to(x0.device)[t].to(x0.dtype).view(-1, 1, 1, 1)
    a, r = ac.sqrt(), (1 - ac).sqrt()
    kwargs = {}
    if self_condition and torch.rand((), generator=gen).item() < 0.5:
        with torch.no_grad():
            out = model(x_t, image, t)
            kwargs["x_self_cond"] = {"pred_noise": (x_t - r * out) / a, "pred_x0": out,
                                     "pred_v": a * x_t - r * out}[objective].detach()
    pred = model(x_t, image, t, **kwargs)
    target = {"pred_noise": noise, "pred_x0": x0, "pred_v": a * noise - r * x0}[objective]
    loss = ((pred - target) ** 2).mean()
    return loss, {"loss": loss.item()}
