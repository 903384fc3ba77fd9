"""The official MedSegDiff code's training loss (MSE + VB + 10 x MSE(cal)) against that code.

tests/data/msd_official_loss_golden.safetensors was written by running ImprintLab/MedSegDiff
(@28b343f) in a scratch folder outside this repository (stub modules for torchvision,
batchgenerators and blobfile, which the loss does not use): `create_model_and_diffusion`
with the msd_official_tiny flags (image_size 32, num_channels 128, num_res_blocks 1,
channel_mult "1,2", attention_resolutions "16", learn_sigma, 1000 linear steps), weights
from tests/families/deterministic_weights.py, then `training_losses_segmentation` on four
seeded samples (t = 0, 1, 500, 999; one mask with soft values 0.7) with the model in eval
mode and, after torch.manual_seed(7), in train mode (the anchor's BatchNorm on batch
statistics and its Dropout2d masks drawn from the global generator). Only its per-sample
terms are stored. To regenerate: build the same model and diffusion there, load the same
weights, call the loss with the stored image, mask, t and noise.
"""
from pathlib import Path

import torch
from deterministic_weights import deterministic_weights
from safetensors.torch import load_file

from dsd_fast.families.medsegdiff_official import (OFFICIAL_CONFIGS, build_official_medsegdiff,
                                                   official_schedule)
from dsd_fast.families.medsegdiff_official.loss import (CAL_WEIGHT, official_medsegdiff_loss,
                                                        official_medsegdiff_terms)

GOLDEN = load_file(str(Path(__file__).parent.parent / "data"
                       / "msd_official_loss_golden.safetensors"))


def tiny_net():
    net = build_official_medsegdiff(OFFICIAL_CONFIGS["msd_official_tiny"])
    net.load_state_dict(deterministic_weights({k: v.shape for k, v in net.state_dict().items()}))
    return net


def test_loss_terms_match_the_official_code_in_eval_and_train_mode():
    net = tiny_net()
    x0 = GOLDEN["mask"] * 2 - 1            # the engine's [-1, 1]; 0.7 -> 0.4, binarised as > 0
    for mode in ("eval", "train"):
        net.train(mode == "train")
        torch.manual_seed(7)               # the dropout masks, drawn in the original's order
        terms = official_medsegdiff_terms(net, GOLDEN["image"], x0, GOLDEN["t"],
                                          GOLDEN["noise"], official_schedule(1000))
        for k in ("loss_diff", "vb", "loss_cal", "loss"):
            ref = GOLDEN[f"{mode}.{k}"]
            err = (terms[k].detach() - ref).abs().max().item()
            assert err <= 1e-5 * ref.abs().max().item(), (mode, k, err)
        total = (terms["loss"] + CAL_WEIGHT * terms["loss_cal"]).mean()
        assert abs(total.item() - GOLDEN[f"{mode}.total"].item()) <= 1e-5 * total.item()
    # dropout acts in training only: the two modes differ, eval is deterministic
    assert not torch.equal(GOLDEN["eval.loss_cal"], GOLDEN["train.loss_cal"])


def test_vb_trains_only_the_variance_channel():
    """guided-diffusion's hybrid loss: the VB term sees the eps channel detached, so its
    gradient reaches the network's output only through channel 1."""
    net = tiny_net().eval()
    grads = {}

    def hook(module, inputs, output):
        out, cal = output
        out.register_hook(lambda g: grads.__setitem__("out", g))
    net.register_forward_hook(hook)
    terms = official_medsegdiff_terms(net, GOLDEN["image"], GOLDEN["mask"] * 2 - 1,
                                      GOLDEN["t"], GOLDEN["noise"], official_schedule(1000))
    terms["vb"].sum().backward()
    assert grads["out"][:, 0].abs().max() == 0
    assert grads["out"][:, 1].abs().max() > 0


def test_loss_draws_t_from_zero_and_averages_the_batch():
    net = tiny_net().eval()
    image = GOLDEN["image"][:2]
    x0 = GOLDEN["mask"][:2] * 2 - 1
    loss, parts = official_medsegdiff_loss(net, image, x0, official_schedule(1000),
                                           torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    t = torch.randint(0, 1000, (2,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    terms = official_medsegdiff_terms(net, image, x0, t, noise, official_schedule(1000))
    expect = (terms["loss"] + CAL_WEIGHT * terms["loss_cal"]).mean()
    assert torch.allclose(loss, expect, rtol=1e-6)
    assert set(parts) == {"loss", "loss_diff", "vb", "loss_cal"}
