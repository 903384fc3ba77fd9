"""Training-time validation at a chosen setting (train --val-setting, --val-crop): parsed and
checked, what the sampler is called with, the zoom path, recorded in the run and in
best.safetensors, kept or re-scored on resume (old runs keep 10 x 3 leading, full)."""
import json

import pytest
import torch
from test_loop import make_disc_dataset

from dsd_fast.checkpoint import read_metadata
from dsd_fast.cli import main
from dsd_fast.pipeline import Pipeline
from dsd_fast.train import TrainOptions, Trainer
from dsd_fast.train.augment import ROI_HOLD
from dsd_fast.train.loop import run_validation
from dsd_fast.train.options import OLD_VALIDATION, parse_val_setting
from dsd_fast.train.validation import validate


def _dataset(root):
    """Dark discs on light backgrounds, the masks the discs; the last 2 are the val set."""
    return make_disc_dataset(root, radii=(3, 6), noise=False)


def _options(root, out, **kw):
    base = dict(image_dir=str(root / "images"), mask_dir=str(root / "masks"),
                out_dir=str(out), train_ids=str(root / "train.txt"),
                val_ids=str(root / "val.txt"), config="tiny_ff", batch_size=2,
                total_steps=2, val_every=2, checkpoint_every=1, log_every=1)
    base.update(kw)
    return TrainOptions(**base)


def _cli(root, run, *extra):
    return main(["train", "--images", str(root / "images"), "--masks", str(root / "masks"),
                 "--train-ids", str(root / "train.txt"), "--val-ids", str(root / "val.txt"),
                 "--out", str(run), "--config", "tiny_ff", "--batch-size", "2",
                 "--val-every", "2", "--threads", "1", "-q", *extra])


def _saved_options(run) -> dict:
    return json.loads(torch.load(run / "last.pt", weights_only=True)["options"])


def _events(run) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.fixture
def sampler_calls(monkeypatch):
    """Every Pipeline.sample call's (steps, ensemble, spacing, noise keys), passed through."""
    calls, real = [], Pipeline.sample

    def spy(self, model_input, steps, ensemble, seed, noise_keys, *a, **kw):
        calls.append((steps, ensemble, kw.get("spacing", "leading"), list(noise_keys)))
        return real(self, model_input, steps, ensemble, seed, noise_keys, *a, **kw)
    monkeypatch.setattr(Pipeline, "sample", spy)
    return calls


# ----------------------------------------------------------------------------- checked

def test_bad_validation_settings_are_refused_saying_what_is_expected(tmp_path):
    root = _dataset(tmp_path / "data")
    assert parse_val_setting(" 5, 25 ,trailing") == (5, 25, "trailing")
    for bad in ("5,25", "5,25,sideways", "0,3,leading", "5,-1,leading", "a,3,leading",
                "5,25,trailing,x"):
        with pytest.raises(ValueError, match="STEPS,MEMBERS,SPACING"):
            parse_val_setting(bad)
    with pytest.raises(ValueError, match="val_spacing"):
        _options(root, tmp_path / "x", val_spacing="middle")
    with pytest.raises(ValueError, match="val_crop"):
        _options(root, tmp_path / "x", val_crop="center")
    with pytest.raises(ValueError, match="val_steps must be at most .* 250"):
        _options(root, tmp_path / "x", val_steps=251)
    with pytest.raises(ValueError, match="val_ensemble"):
        _options(root, tmp_path / "x", val_ensemble=0)


def test_the_command_line_refuses_a_bad_setting_in_one_line(tmp_path, capsys):
    root = _dataset(tmp_path / "data")
    assert _cli(root, tmp_path / "run", "--steps", "2", "--val-setting", "5,trailing") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --val-setting must be STEPS,MEMBERS,SPACING") \
        and "5,trailing" in err
    assert not (tmp_path / "run" / "last.pt").exists()


# ----------------------------------------------------------------------------- used

def test_validation_samples_at_the_given_setting(tmp_path, sampler_calls):
    root = _dataset(tmp_path / "data")
    Trainer(_options(root, tmp_path / "run", val_steps=2, val_ensemble=2,
                     val_spacing="trailing"), log=lambda *a: None).run(progress=False)
    assert sampler_calls and {c[:3] for c in sampler_calls} == {(2, 2, "trailing")}
    sampler_calls.clear()
    Trainer(_options(root, tmp_path / "default"), log=lambda *a: None).run(progress=False)
    assert {c[:3] for c in sampler_calls} == {(10, 3, "leading")}     # today's default


def _oracle(self, model_input, steps, ensemble, seed, noise_keys, *a, **kw):
    """A perfect 'network': each view's darker half of its range is the disc."""
    m = model_input.float().mean(1)
    lo, hi = m.amin((1, 2), keepdim=True), m.amax((1, 2), keepdim=True)
    fg = torch.where(m < (lo + hi) / 2, 1.0, -1.0)
    return fg[:, None].expand(-1, ensemble, -1, -1).clone()


def test_val_crop_zoom_runs_the_two_passes_on_images_held_larger(tmp_path, monkeypatch):
    root = _dataset(tmp_path / "data")
    tr = Trainer(_options(root, tmp_path / "run", val_crop="zoom", val_steps=2,
                          val_ensemble=2, val_spacing="trailing"), log=lambda *a: None)
    held = ROI_HOLD * 16
    assert all(s.image.shape[-2:] == (held, held) for s in tr.val_samples)
    calls = []

    def oracle(self, model_input, steps, ensemble, seed, noise_keys, *a, **kw):
        calls.append((steps, ensemble, kw.get("spacing", "leading"), list(noise_keys)))
        return _oracle(self, model_input, steps, ensemble, seed, noise_keys)
    monkeypatch.setattr(Pipeline, "sample", oracle)
    score = tr.validate_ema()
    # pass 1 at zoom's cheap setting (the call's own: 2 steps <= 5) keyed by index, pass 2
    # at the run's setting on each image's box, keyed "<index>#zoom"
    assert calls[0] == (2, 2, "trailing", [0, 1])
    assert calls[1] == (2, 2, "trailing", ["0#zoom", "1#zoom"])
    assert len(calls) == 2
    # scored at the held resolution against the held masks: the oracle's masks are right
    assert score > 0.9, score
    full = Trainer(_options(root, tmp_path / "full", val_steps=2, val_ensemble=2),
                   log=lambda *a: None)
    assert all(s.image.shape[-2:] == (16, 16) for s in full.val_samples)
    calls.clear()
    assert full.validate_ema() > 0.8 and len(calls) == 1 and calls[0][3] == [0, 1]


def test_zoom_validation_scores_a_wrong_mask_low(tmp_path, monkeypatch):
    """The zoom path's Dice can fail: an oracle that marks the background scores ~0."""
    root = _dataset(tmp_path / "data")
    tr = Trainer(_options(root, tmp_path / "run", val_crop="zoom", val_steps=2,
                          val_ensemble=1), log=lambda *a: None)
    monkeypatch.setattr(Pipeline, "sample",
                        lambda *a, **kw: -_oracle(*a, **kw))
    assert validate(tr.model, tr.val_samples, 2, 1, crop="zoom") < 0.3


# ----------------------------------------------------------------------------- recorded

def test_the_setting_is_recorded_in_the_run_and_in_best(tmp_path):
    root = _dataset(tmp_path / "data")
    run = tmp_path / "run"
    assert _cli(root, run, "--steps", "2", "--val-setting", "2,2,trailing",
                "--val-crop", "zoom") == 0
    saved = _saved_options(run)
    assert {k: saved[k] for k in OLD_VALIDATION} == {
        "val_steps": 2, "val_ensemble": 2, "val_spacing": "trailing", "val_crop": "zoom"}
    meta = read_metadata(run / "best.safetensors")
    assert json.loads(meta["val_setting"]) == {"steps": 2, "ensemble": 2,
                                               "spacing": "trailing", "crop": "zoom"}
    # resumed on the command line without the flags: the run keeps its own setting
    assert _cli(root, run, "--steps", "4") == 0
    assert {k: _saved_options(run)[k] for k in OLD_VALIDATION} == {
        "val_steps": 2, "val_ensemble": 2, "val_spacing": "trailing", "val_crop": "zoom"}
    assert not any("val_setting_changed" in e for e in _events(run))


# ----------------------------------------------------------------------------- resumed

def _strip_validation(run):
    """Make run/last.pt look like a run saved before the setting existed."""
    st = torch.load(run / "last.pt", weights_only=True)
    opts = json.loads(st["options"])
    for k in ("val_spacing", "val_crop", "val_steps", "val_ensemble"):
        opts.pop(k)
    st["options"] = json.dumps(opts)
    torch.save(st, run / "last.pt")


def test_an_old_run_resumes_with_the_old_default(tmp_path, sampler_calls):
    root = _dataset(tmp_path / "data")
    run = tmp_path / "run"
    assert _cli(root, run, "--steps", "2") == 0
    _strip_validation(run)
    assert run_validation(run) == OLD_VALIDATION
    best = torch.load(run / "last.pt", weights_only=True)["best_dice"]
    sampler_calls.clear()
    # resumed at the old default: its best Dice is the one to beat, nothing validated again
    tr = Trainer(_options(root, run, total_steps=4, val_steps=10, val_ensemble=3),
                 log=lambda *a: None)
    assert tr.step == 2 and tr.best_dice == best and not sampler_calls
    # and on the command line without the flags, it validates at the old default
    assert _cli(root, run, "--steps", "4") == 0
    assert {c[:3] for c in sampler_calls} == {(10, 3, "leading")}
    assert {k: _saved_options(run)[k] for k in OLD_VALIDATION} == OLD_VALIDATION
    assert not any("val_setting_changed" in e for e in _events(run))


def test_resuming_at_another_setting_scores_best_again(tmp_path, sampler_calls):
    root = _dataset(tmp_path / "data")
    run = tmp_path / "run"
    Trainer(_options(root, run, val_steps=2, val_ensemble=1), log=lambda *a: None).run(
        progress=False)
    before = torch.load(run / "last.pt", weights_only=True)["best_dice"]
    sampler_calls.clear()
    tr = Trainer(_options(root, run, total_steps=4, val_steps=3, val_ensemble=2,
                          val_spacing="trailing"), log=lambda *a: None)
    # best.safetensors validated at the new setting on resume, before any training step
    assert tr.step == 2 and {c[:3] for c in sampler_calls} == {(3, 2, "trailing")}
    again = validate(tr.ema_model, tr.val_samples, 3, 2, spacing="trailing")
    assert tr.best_dice == pytest.approx(again)
    changed = [e for e in _events(run) if "val_setting_changed" in e]
    assert len(changed) == 1 and changed[0]["best_val_dice_before"] == before
    assert changed[0]["val_setting_changed"]["to"]["val_spacing"] == "trailing"
    meta = read_metadata(run / "best.safetensors")
    assert json.loads(meta["val_setting"])["spacing"] == "trailing"
    assert json.loads(meta["val_dice"]) == pytest.approx(again)
    assert json.loads(meta["step"]) == 2
