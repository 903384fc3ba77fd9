"""A family is a folder: a toy family defined here, in a test, registers itself and then
loads, segments, trains and runs from the command line without any engine file naming it.

The toy network is a three-layer CNN predicting the noise of a one-channel mask from x_t
and the image, with the timestep fed as a constant plane: enough to exercise every seam
(registry, own-format files, the segmenter protocol and its options, the training loop's
family loss, the command line)."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import dsd_fast
from dsd_fast.cli import main
from dsd_fast.diffusion import Schedule
from dsd_fast.families import ModelFamily, register, unregister
from dsd_fast.preprocess import Preprocessing


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    width: int = 8
    image_size: int = 16
    timesteps: int = 50

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> "ToyConfig":
        return cls(**d)

    def replace(self, **changes) -> "ToyConfig":
        return dataclasses.replace(self, **changes)


class ToyNet(nn.Module):
    def __init__(self, config: ToyConfig):
        super().__init__()
        self.config = config
        w = config.width
        self.body = nn.Sequential(nn.Conv2d(1 + 3 + 1, w, 3, padding=1), nn.SiLU(),
                                  nn.Conv2d(w, w, 3, padding=1), nn.SiLU(),
                                  nn.Conv2d(w, 1, 3, padding=1))

    def forward(self, x_t, image, t):
        plane = (t.float() / self.config.timesteps).view(-1, 1, 1, 1).expand_as(x_t)
        return self.body(torch.cat([x_t, image, plane], dim=1))


class ToyFamily(ModelFamily):
    name = "toy"
    title = "Toy (a test's family)"
    config_class = ToyConfig
    configs = {"toy_small": ToyConfig()}
    signature_keys = ("body.0.weight",)

    def build_reference(self, config):
        return ToyNet(config)

    def owns(self, net):
        return isinstance(net, ToyNet)

    def default_schedule(self, config):
        return Schedule.linear(config.timesteps, 1e-4, 0.05)

    def preprocessing(self, config):
        return Preprocessing(image_size=config.image_size)

    def training_loss(self, net, config, image, x0, schedule, gen, options):
        from dsd_fast.diffusion.training import draw_t_and_noise
        t, noise = draw_t_and_noise(gen, 0, schedule.T, x0)
        loss = ((net(schedule.q_sample(x0, t, noise), image, t) - noise) ** 2).mean()
        return loss, {"loss": loss.item()}

    def recognises(self, state_dict):
        return "body.0.weight" in state_dict

    def state_dict_from(self, obj):
        return obj if isinstance(obj, dict) else None

    def infer_config(self, state_dict, **settings):
        return ToyConfig(width=state_dict["body.0.weight"].shape[0], **settings)


@pytest.fixture
def toy():
    fam = register(ToyFamily())
    yield fam
    unregister("toy")


def _images(folder, n=3, size=20):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size + 4, 3), dtype=np.uint8)).save(
            folder / f"im{i}.png")
    return folder


def test_a_registered_toy_family_loads_segments_and_saves(toy, tmp_path):
    net = ToyNet(ToyConfig()).eval()
    path = dsd_fast.save_model(net, tmp_path / "toy.safetensors")
    pipe = dsd_fast.load(path)
    assert pipe.family is toy and isinstance(pipe.model, ToyNet)
    assert pipe.schedule.T == 50 and pipe.preprocessing.image_size == 16
    res = pipe.segment(str(_images(tmp_path / "in") / "im0.png"), steps=3, ensemble=2)
    assert res[0].mask.shape == (20, 24) and res[0].probability.dtype == np.float32
    # the segmenter's options are checked against the toy model (its T = 50)
    with pytest.raises(ValueError, match="1..50"):
        pipe.segment(torch.rand(3, 8, 8), steps=51)
    # its original-code files (a bare state dict) are recognised by the registry
    torch.save(net.state_dict(), tmp_path / "bare.pt")
    assert dsd_fast.load(tmp_path / "bare.pt").family is toy


def test_the_toy_family_trains_and_runs_from_the_command_line(toy, tmp_path, capsys):
    root = tmp_path / "data"
    images = _images(root / "images", n=4, size=16)
    (root / "masks").mkdir()
    for i in range(4):
        m = np.zeros((16, 20), np.uint8)
        m[4:12, 5 + i:13 + i] = 255
        Image.fromarray(m).save(root / "masks" / f"im{i}.png")
    run = tmp_path / "run"
    assert main(["train", "--images", str(images), "--masks", str(root / "masks"),
                 "--out", str(run), "--config", "toy_small", "--steps", "2",
                 "--batch-size", "2", "--val-every", "100", "--threads", "1", "-q"]) == 0
    best = run / "best.safetensors"
    assert dsd_fast.load(best).family is toy
    out = tmp_path / "out"
    assert main(["segment", str(images), "-o", str(out), "--checkpoint", str(best),
                 "--steps", "2", "--ensemble", "2", "-q", "--no-report"]) == 0
    records = json.loads((out / "results.json").read_text())["images"]
    assert len(records) == 4 and (out / "im0_mask.png").is_file()
    # the command line's mask is the API's for the same file, options and noise key
    api = dsd_fast.load(best).segment(str(images / "im1.png"), steps=2, ensemble=2,
                                      noise_keys=["im1"], batch_size=1)[0]
    cli = np.array(Image.open(out / "im1_mask.png")) > 0
    np.testing.assert_array_equal(cli, api.mask)
