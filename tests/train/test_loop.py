"""Training: the loop lowers the loss, checkpoints resume the same run, the bundle is written."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from dsd_fast import load_model
from dsd_fast.precision import native_bf16
from dsd_fast.train import EMA, TrainOptions, Trainer
from dsd_fast.train.loop import scheduled_lr


def make_disc_dataset(root, n=6, size=24, radii=(4, 8), noise=True):
    """Synthetic lesions: a dark disc (radius drawn from radii, end excluded) on lighter skin,
    its mask the disc; noise: +-10 levels of noise on the image."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        cy, cx, r = rng.integers(8, 16), rng.integers(8, 16), rng.integers(*radii)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        img = np.where(disc[..., None], [80, 50, 40], [200, 160, 150]).astype(np.uint8)
        if noise:
            img = np.clip(img + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / "images" / f"s{i}.png")
        Image.fromarray((disc * 255).astype(np.uint8)).save(root / "masks" / f"s{i}.png")
    (root / "train.txt").write_text("\n".join(f"s{i}" for i in range(n - 2)))
    (root / "val.txt").write_text("\n".join(f"s{i}" for i in range(n - 2, n)))
    return root


def options(root, out, **kw):
    base = dict(image_dir=str(root / "images"), mask_dir=str(root / "masks"), out_dir=str(out),
                train_ids=str(root / "train.txt"), val_ids=str(root / "val.txt"), config="tiny_ff",
                batch_size=4, lr=2e-3, val_every=20, val_steps=2, val_ensemble=1,
                checkpoint_every=10, log_every=10, ema_update_after=5)
    base.update(kw)
    return TrainOptions(**base)


def test_training_lowers_loss_and_writes_best(tmp_path):
    root = make_disc_dataset(tmp_path / "data")
    tr = Trainer(options(root, tmp_path / "run", total_steps=40), log=lambda *_: None)
    first = np.mean([tr.train_step()["l2"] for _ in range(5)])
    tr.run(progress=False)
    last = np.mean([tr.train_step()["l2"] for _ in range(5)])
    assert last < 0.8 * first, (first, last)
    model = load_model(tmp_path / "run" / "best.safetensors")
    assert model.config.ff_parser and model.config.image_size == 16
    events = [json.loads(l) for l in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert any("val_dice" in e for e in events) and any("smoothed_loss" in e for e in events)


def test_resume_continues_the_same_run(tmp_path):
    root = make_disc_dataset(tmp_path / "data")
    # one straight run of 20 steps
    straight = Trainer(options(root, tmp_path / "a", total_steps=20, val_ids=None), log=lambda *_: None)
    straight.run(progress=False)
    # 10 steps, stop, a new Trainer resumes from last.pt and does 10 more
    part = Trainer(options(root, tmp_path / "b", total_steps=10, val_ids=None), log=lambda *_: None)
    part.run(progress=False)
    resumed = Trainer(options(root, tmp_path / "b", total_steps=20, val_ids=None), log=lambda *_: None)
    assert resumed.step == 10
    resumed.run(progress=False)
    for k, v in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v, rtol=1e-5, atol=1e-6)
    for k, v in straight.ema.shadow.items():
        torch.testing.assert_close(resumed.ema.shadow[k], v, rtol=1e-5, atol=1e-6)


def test_resume_refuses_a_different_config(tmp_path):
    root = make_disc_dataset(tmp_path / "data")
    Trainer(options(root, tmp_path / "r", total_steps=10, val_ids=None), log=lambda *_: None).run(progress=False)
    with pytest.raises(ValueError, match="config"):
        Trainer(options(root, tmp_path / "r", total_steps=20, val_ids=None, config="tiny"))


def test_ema_warmup_schedule():
    m = torch.nn.Linear(2, 2)
    ema = EMA(m, beta=0.9999, update_after=500, power=0.9)
    assert ema.decay(500) == 0.0                       # copies before warm-up ends
    assert ema.decay(502) == pytest.approx(1 - 2 ** -0.9)
    assert ema.decay(10 ** 9) == 0.9999
    with torch.no_grad():
        m.weight.fill_(1.0)
    ema.update(m, 100)
    assert torch.equal(ema.shadow["weight"], m.weight)


def test_unmatched_pairs_are_errors(tmp_path):
    root = make_disc_dataset(tmp_path / "data")
    (root / "masks" / "s0.png").unlink()
    with pytest.raises(ValueError, match="s0"):
        Trainer(options(root, tmp_path / "run", total_steps=1))


@pytest.fixture(scope="module")
def run_of_20_steps(tmp_path_factory):
    """make_disc_dataset's data and the best.safetensors of a finished 20-step run of
    options() on it (validated at step 20): the warm starts' source, read and never
    written by the tests that share it."""
    root = make_disc_dataset(tmp_path_factory.mktemp("run20") / "data")
    Trainer(options(root, root.parent / "a", total_steps=20), log=lambda *_: None).run(
        progress=False)
    return root, root.parent / "a" / "best.safetensors"


def test_warm_start_takes_weights_and_step_and_refuses_another_config(tmp_path,
                                                                      run_of_20_steps):
    root, best = run_of_20_steps
    source = load_model(best)
    warm = Trainer(options(root, tmp_path / "b", total_steps=30, init_from=str(best)),
                   log=lambda *_: None)
    # the file's weights are both the online and the EMA weights; the step continues
    assert warm.step == 20
    for k, v in source.state_dict().items():
        assert torch.equal(warm.model.state_dict()[k], v), k
        assert torch.equal(warm.ema.shadow[k], v), k
    warm.run(progress=False)
    assert warm.step == 30
    # once the new run has its own last.pt, it resumes from that and ignores --init-from
    again = Trainer(options(root, tmp_path / "b", total_steps=40, init_from=str(best)),
                    log=lambda *_: None)
    assert again.step == 30
    with pytest.raises(ValueError, match="config"):
        Trainer(options(root, tmp_path / "c", total_steps=30, init_from=str(best), config="tiny"))


def test_warm_start_from_another_input_size_moves_the_ff_parser_gates(tmp_path):
    from conftest import make_model
    from dsd_fast import get_config, save_model
    from dsd_fast.families.dermosegdiff.layers import resize_ff_weight
    root = make_disc_dataset(tmp_path / "data")
    src = make_model(get_config("tiny_ff").replace(image_size=24))
    path = save_model(src, tmp_path / "at24.safetensors")
    warm = Trainer(options(root, tmp_path / "b", total_steps=3, init_from=str(path)),
                   log=lambda *_: None)                       # tiny_ff: 16 px
    assert warm.config.image_size == 16
    for k, v in src.state_dict().items():
        want = resize_ff_weight(v, warm.model.state_dict()[k].shape[1]) \
            if k.endswith("ff_parser.weight") else v
        assert torch.equal(warm.model.state_dict()[k], want), k
        assert torch.equal(warm.ema.shadow[k], want), k
    warm.run(progress=False)
    assert warm.step == 3


def test_cosine_lr_anneals_over_the_runs_own_steps(tmp_path, run_of_20_steps):
    # formula: full lr at the run's first step, half at its middle, 0 at its end
    assert scheduled_lr(1e-3, "cosine", 100, 100, 200) == pytest.approx(1e-3)
    assert scheduled_lr(1e-3, "cosine", 150, 100, 200) == pytest.approx(5e-4)
    assert scheduled_lr(1e-3, "cosine", 200, 100, 200) == pytest.approx(0.0, abs=1e-12)
    assert scheduled_lr(1e-3, "constant", 150, 100, 200) == 1e-3
    with pytest.raises(ValueError, match="lr_schedule"):
        options(tmp_path, tmp_path / "x", lr_schedule="linear")
    # a warm-started run counts from the file's step: at step 25 of 20..30 the optimizer's
    # last update used lr(24) = lr * (1 + cos(0.4 pi)) / 2
    root, best = run_of_20_steps
    warm = Trainer(options(root, tmp_path / "b", total_steps=30, lr_schedule="cosine",
                           init_from=str(best)),
                   log=lambda *_: None)
    for _ in range(5):
        warm.train_step()
    expected = 2e-3 * 0.5 * (1 + np.cos(0.4 * np.pi))
    assert warm.opt.param_groups[0]["lr"] == pytest.approx(expected)


def test_medsegdiff_trains_through_the_command_line(tmp_path, capsys):
    """The MedSegDiff family trains with its own loss (the package's MSE on the objective,
    t from 0, self-conditioning half of the time), validates with its samplers, and the
    bundle it writes loads back as a MedSegDiff pipeline with its schedule."""
    import dsd_fast
    from dsd_fast.cli import main
    from dsd_fast.families.medsegdiff.loss import medsegdiff_loss
    root = make_disc_dataset(tmp_path / "data")
    args = ["train", "--images", str(root / "images"), "--masks", str(root / "masks"),
            "--train-ids", str(root / "train.txt"), "--val-ids", str(root / "val.txt"),
            "--out", str(tmp_path / "run"), "--config", "msd_tiny_sc", "--steps", "4",
            "--batch-size", "2", "--val-every", "2", "--threads", "1", "-q"]
    assert main(args) == 0
    assert "best validation Dice" in capsys.readouterr().out
    pipe = dsd_fast.load(tmp_path / "run" / "best.safetensors")
    assert pipe.family.name == "medsegdiff" and pipe.config.self_condition
    assert pipe.schedule.T == 1000 and pipe.preprocessing.normalise == "none"
    events = [json.loads(l) for l in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert sum("val_dice" in e for e in events) == 2
    # the loss targets the objective: a network that outputs the target exactly has loss 0
    sched = pipe.schedule
    x0 = torch.rand(2, 1, 16, 16) * 2 - 1

    class Oracle(torch.nn.Module):            # reads the noise back out of x_t
        def forward(self, x_t, image, t, x_self_cond=None):
            ac = sched.alphas_cumprod[t].float().view(-1, 1, 1, 1)
            noise = (x_t - ac.sqrt() * x0) / (1 - ac).sqrt()
            return {"eps": noise, "x0": x0, "v": ac.sqrt() * noise - (1 - ac).sqrt() * x0}[
                self.kind]
    for objective, kind in (("pred_noise", "eps"), ("pred_x0", "x0"), ("pred_v", "v")):
        oracle = Oracle()
        oracle.kind = kind
        loss, _ = medsegdiff_loss(oracle, torch.rand(2, 3, 16, 16), x0, sched, objective, True,
                                  torch.Generator().manual_seed(0))
        assert loss.item() < 1e-6, objective


def test_official_medsegdiff_trains_through_the_command_line(tmp_path, capsys):
    """The official MedSegDiff family trains with its own loss (families/test_medsegdiff_official_loss.py) and
    the bundle loads back as that family with its schedule."""
    import dsd_fast
    from dsd_fast.cli import main
    root = make_disc_dataset(tmp_path / "data", size=32)
    args = ["train", "--images", str(root / "images"), "--masks", str(root / "masks"),
            "--train-ids", str(root / "train.txt"), "--val-ids", str(root / "val.txt"),
            "--out", str(tmp_path / "run"), "--config", "msd_official_tiny", "--steps", "2",
            "--batch-size", "2", "--val-every", "2", "--threads", "1", "-q",
            # validation as such is test_val_setting.py's: 2 DDIM steps x 1 member here
            "--val-setting", "2,1,trailing"]
    assert main(args) == 0
    assert "best validation Dice" in capsys.readouterr().out
    pipe = dsd_fast.load(tmp_path / "run" / "best.safetensors")
    assert pipe.family.name == "medsegdiff-official" and pipe.schedule.T == 1000
    trainer = Trainer(options(root, tmp_path / "again", config="msd_official_tiny",
                              batch_size=2), log=lambda *_: None)
    assert set(trainer.train_step()) == {"loss", "loss_diff", "vb", "loss_cal"}


needs_bf16 = pytest.mark.skipif(not native_bf16("cpu"),
                                reason="this CPU has no native bfloat16 (AVX-512 BF16 / AMX)")


@needs_bf16
def test_bf16_training_runs_the_forward_in_bfloat16_and_still_learns(tmp_path):
    root = make_disc_dataset(tmp_path / "data")
    tr = Trainer(options(root, tmp_path / "run", total_steps=40, precision="bf16"),
                 log=lambda *_: None)
    x, img, t = torch.randn(2, 1, 16, 16), torch.rand(2, 3, 16, 16), torch.tensor([3, 7])
    with torch.no_grad():
        fp32, bf16 = tr.model(x, img, t), tr.net(x, img, t)
    # the autocast forward is a different computation (not the float32 one) within
    # bfloat16's precision, and comes back as float32
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, fp32)
    assert (bf16 - fp32).abs().max() < 0.05 * fp32.abs().max()
    first = np.mean([tr.train_step()["l2"] for _ in range(5)])
    tr.run(progress=False)
    last = np.mean([tr.train_step()["l2"] for _ in range(5)])
    assert last < 0.8 * first, (first, last)
    # weights, gradients and checkpoints stay float32 under the model's own key names
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32
               for p in tr.model.parameters() if p.grad is not None)
    st = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert set(st["model"]) == set(tr.model.state_dict())
    assert json.loads(st["options"])["precision"] == "bf16"


@needs_bf16
def test_bf16_training_of_a_family_with_tuple_outputs(tmp_path):
    """The official MedSegDiff returns (out, cal): both come back float32 into its loss."""
    root = make_disc_dataset(tmp_path / "data", size=32)
    tr = Trainer(options(root, tmp_path / "run", config="msd_official_tiny", batch_size=2,
                         precision="bf16"), log=lambda *_: None)
    out = tr.net(torch.randn(2, 1, 32, 32), torch.rand(2, 3, 32, 32), torch.tensor([5, 900]))
    assert [o.dtype for o in out] == [torch.float32, torch.float32]
    parts = tr.train_step()
    assert set(parts) == {"loss", "loss_diff", "vb", "loss_cal"}
    assert all(np.isfinite(v) for v in parts.values())


def test_bf16_training_falls_back_to_float32_without_native_bf16(tmp_path, monkeypatch):
    import dsd_fast.precision as P
    monkeypatch.setattr(P, "native_bf16", lambda device: False)
    P._warn_no_bf16.cache_clear()
    root = make_disc_dataset(tmp_path / "data")
    with pytest.warns(RuntimeWarning, match="no native bfloat16"):
        tr = Trainer(options(root, tmp_path / "run", precision="bf16"), log=lambda *_: None)
    assert tr.net is tr.model
    with pytest.raises(ValueError, match="precision"):
        options(root, tmp_path / "x", precision="fp16")


def test_device_is_checked_before_anything_is_built(tmp_path):
    root = make_disc_dataset(tmp_path / "data")
    for bad in ("tpu", "gpu", "cuda:x"):
        with pytest.raises(ValueError, match="device must be"):
            options(root, tmp_path / "x", device=bad)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            options(root, tmp_path / "x", device="cuda")
    assert not (tmp_path / "x").exists()


def test_random_draws_come_from_the_cpu_generator_on_the_batch_device():
    from dsd_fast.diffusion.training import draw_t_and_noise
    x0 = torch.zeros(3, 1, 8, 8)
    t, noise = draw_t_and_noise(torch.Generator().manual_seed(5), 1, 100, x0)
    gen = torch.Generator().manual_seed(5)
    assert torch.equal(t, torch.randint(1, 100, (3,), generator=gen))
    assert torch.equal(noise, torch.randn(x0.shape, generator=gen))
    assert t.device == noise.device == x0.device and int(t.min()) >= 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none here)")
@pytest.mark.parametrize("config", ["tiny_ff", "msd_official_tiny"])
def test_cuda_training_repeats_the_cpu_run(tmp_path, config):
    """Same seed, same batches and timesteps (drawn on the CPU): for DermoSegDiff what 10
    steps change agrees between the devices to 5% (float32 reordering, which Adam can
    amplify on near-zero gradients; other batches would differ by about 100%). The official
    network's anchor has Dropout2d, whose masks come from each device's own generator, so
    there only: the run trains with finite losses. The checkpoint resumes on the CPU."""
    root = make_disc_dataset(tmp_path / "data", size=64 if "official" in config else 24)
    runs, flat = {}, lambda m: torch.cat([v.float().flatten().cpu()
                                          for v in m.state_dict().values()])
    for dev in ("cpu", "cuda"):
        tr = Trainer(options(root, tmp_path / dev, total_steps=10, val_ids=None, config=config,
                             device=dev), log=lambda *_: None)
        start = flat(tr.model)
        tr.run(progress=False)
        runs[dev] = (start, flat(tr.model))
        assert next(tr.model.parameters()).device.type == dev
    assert torch.equal(runs["cpu"][0], runs["cuda"][0])            # same initial weights
    assert all(np.isfinite(v) for v in tr.train_step().values())
    if config == "tiny_ff":
        moved = runs["cpu"][1] - runs["cpu"][0]
        assert (runs["cuda"][1] - runs["cpu"][1]).norm() < 0.05 * moved.norm()
    resumed = Trainer(options(root, tmp_path / "cuda", total_steps=12, val_ids=None,
                              config=config), log=lambda *_: None)
    assert resumed.step == 10
    resumed.run(progress=False)


def test_export_ema_writes_the_runs_current_ema(tmp_path, run_of_20_steps):
    from dsd_fast.checkpoint import read_metadata
    from dsd_fast.train.export import export_ema
    root, best = run_of_20_steps
    run = best.parent
    state = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    out = export_ema(run, tmp_path / "ema.safetensors")
    model = load_model(out)
    for k, v in state["ema"].items():
        assert torch.equal(model.state_dict()[k], v), k
    assert read_metadata(out)["step"] == str(state["step"]) == "20"
    assert read_metadata(out)["preprocessing"] == read_metadata(best)["preprocessing"]
    with pytest.raises(FileNotFoundError, match="last.pt"):
        export_ema(tmp_path, tmp_path / "none.safetensors")


def test_export_ema_of_a_run_stopped_before_its_first_validation(tmp_path, run_of_20_steps):
    """No best.safetensors yet: the pipeline comes from the run's --init-from file."""
    from dsd_fast.train.export import export_ema
    root, best = run_of_20_steps
    Trainer(options(root, tmp_path / "b", total_steps=25, init_from=str(best)),
            log=lambda *_: None).run(progress=False)
    (tmp_path / "b" / "best.safetensors").unlink()       # as if killed before validating
    state = torch.load(tmp_path / "b" / "last.pt", map_location="cpu", weights_only=True)
    model = load_model(export_ema(tmp_path / "b", tmp_path / "ema.safetensors"))
    for k, v in state["ema"].items():
        assert torch.equal(model.state_dict()[k], v), k
    Trainer(options(root, tmp_path / "c", total_steps=3, val_ids=None),
            log=lambda *_: None).run(progress=False)
    (tmp_path / "c" / "best.safetensors").unlink()       # and no --init-from either
    with pytest.raises(FileNotFoundError, match="init-from"):
        export_ema(tmp_path / "c", tmp_path / "none.safetensors")
