"""Checkpoint formats: published training checkpoint, bare state dict, own safetensors;
family detection."""
import json

import pytest
import torch

import dsd_fast
from dsd_fast import CheckpointError, ModelConfig, get_config, load_model, pipeline_from_network, save_model
from dsd_fast.diffusion import Schedule
from dsd_fast.families.dermosegdiff.checkpoint import infer_config
from dsd_fast.preprocess import Preprocessing


def _inputs(size=16, b=2):
    torch.manual_seed(7)
    return torch.randn(b, 1, size, size), torch.rand(b, 3, size, size), torch.tensor([5, 200][:b])


def _same_outputs(a, b):
    x, g, t = _inputs(a.config.image_size)
    with torch.no_grad():
        return torch.equal(a(x, g, t), b(x, g, t))


def published_training_checkpoint(model):
    """The published layout: model, ema (ema_pytorch wrapper keys), optimizer, epochs."""
    online = {k: v + 1.0 for k, v in model.state_dict().items()}   # differs from the EMA
    ema = {"initted": torch.tensor(True), "step": torch.tensor(1234)}
    ema.update({f"online_model.{k}": v for k, v in online.items()})
    ema.update({f"ema_model.{k}": v for k, v in model.state_dict().items()})
    return {"model": online, "epoch": 10, "epochs": 3000, "vl_loss": 0.01,
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]}, "ema": ema}


def test_published_training_checkpoint_uses_ema(tmp_path, tiny_model):
    path = tmp_path / "best.pth"
    torch.save(published_training_checkpoint(tiny_model), path)
    loaded = load_model(path, config=get_config("tiny"))
    assert _same_outputs(tiny_model, loaded)


def test_training_checkpoint_without_ema_uses_model(tmp_path, tiny_model):
    path = tmp_path / "m.pt"
    torch.save({"model": tiny_model.state_dict(), "epoch": 1}, path)
    assert _same_outputs(tiny_model, load_model(path, config=get_config("tiny")))


def test_bare_state_dict_file_and_in_memory(tmp_path, tiny_model):
    path = tmp_path / "sd.pth"
    torch.save(tiny_model.state_dict(), path)
    assert _same_outputs(tiny_model, load_model(path, config=get_config("tiny")))
    assert _same_outputs(tiny_model, load_model(tiny_model.state_dict(), config=get_config("tiny")))


def test_own_format_round_trip_keeps_family_config_schedule_preprocessing(tmp_path,
                                                                          tiny_ff_model):
    sched = Schedule.linear(100, 1e-4, 2e-2)
    pre = Preprocessing(16, normalise="none")
    path = save_model(tiny_ff_model, tmp_path / "m.safetensors", schedule=sched,
                      preprocessing=pre)
    loaded = load_model(path)                  # no config given: read from metadata
    assert loaded.config == tiny_ff_model.config
    assert _same_outputs(tiny_ff_model, loaded)
    pipe = dsd_fast.load(path)
    assert torch.equal(pipe.schedule.betas, sched.betas) and pipe.preprocessing == pre
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == "dsd_fast" and json.loads(meta["config"])["ff_parser"] is True
    assert meta["family"] == "dermosegdiff" and meta["format_version"] == "2"
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))
    # a Pipeline saves its own schedule and preprocessing
    path2 = save_model(pipe, tmp_path / "p.safetensors")
    again = dsd_fast.load(path2)
    assert torch.equal(again.schedule.betas, sched.betas) and again.preprocessing == pre


def test_version_1_files_without_a_family_load_as_dermosegdiff(tmp_path, tiny_model):
    """Files written before families existed (format 1: no "family" key), e.g. the bundled
    default model, are DermoSegDiff."""
    from safetensors.torch import save_file
    meta = {"format": "dsd_fast", "format_version": "1", "config": tiny_model.config.to_json(),
            "schedule": json.dumps(Schedule.published().to_dict()),
            "preprocessing": json.dumps({"image_size": 16, "resize": "bilinear",
                                         "normalise": "minmax"})}
    path = tmp_path / "v1.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_model.state_dict().items()}, str(path),
              metadata=meta)
    pipe = dsd_fast.load(path)
    assert pipe.family.name == "dermosegdiff" and _same_outputs(tiny_model, pipe.model)


def test_unknown_weights_name_the_families_tried(tiny_model):
    with pytest.raises(CheckpointError, match=r"no model family.*dermosegdiff.*time_mlp_x.*"
                                              r"medsegdiff.*init_conv.*diffseg.*time_embed"):
        load_model({"encoder.weight": torch.zeros(3), "decoder.bias": torch.zeros(3)})
    with pytest.raises(KeyError, match="unknown model family 'unet3d'.*dermosegdiff"):
        load_model(tiny_model.state_dict(), family="unet3d")
    with pytest.raises(CheckpointError, match="med-seg-diff-pytorch Unet"):   # wrong family
        load_model(tiny_model.state_dict(), family="medsegdiff")
    # the family named explicitly: its own message
    with pytest.raises(CheckpointError, match="DermoSegDiff"):
        load_model({"epoch": 3}, family="dermosegdiff")
    # a network that is not of any family cannot be saved or segmented
    with pytest.raises(TypeError, match="model family"):
        pipeline_from_network(torch.nn.Conv2d(1, 1, 1))


def test_config_inference_from_shapes():
    for cfg in [get_config("tiny"), ModelConfig(16, 8, (1, 3, 5), (2, 4, 8), 8),
                get_config("tiny_ff").replace(resnet_block_groups=8)]:
        torch.manual_seed(0)
        sd = make_model_with(cfg).state_dict()
        inferred = infer_config(sd)
        # GroupNorm shapes cannot reveal the group count: the published 8 is assumed;
        # without FF-Parser weights the size cannot be read either: published 128.
        expected = cfg.replace(resnet_block_groups=8,
                               image_size=cfg.image_size if cfg.ff_parser else 128)
        assert inferred == expected
    # published configs, on the meta device (no memory)
    from dsd_fast import DermoSegDiff
    for name in ("isic2018", "ham10000"):
        with torch.device("meta"):
            sd = DermoSegDiff(get_config(name)).state_dict()
        assert infer_config(sd) == get_config(name)


def make_model_with(cfg):
    from dsd_fast import DermoSegDiff
    return DermoSegDiff(cfg)


def test_wrong_shape_names_the_key(tiny_model):
    sd = dict(tiny_model.state_dict())
    sd["final_conv.weight"] = torch.zeros(1, 9, 1, 1)
    with pytest.raises(CheckpointError, match=r"final_conv\.weight.*\(1, 9, 1, 1\).*\(1, 8, 1, 1\)"):
        load_model(sd, config=get_config("tiny"))


def test_missing_and_extra_keys_are_named(tiny_model):
    sd = dict(tiny_model.state_dict())
    del sd["init_conv_x.bias"]
    with pytest.raises(CheckpointError, match="init_conv_x.bias"):
        load_model(sd, config=get_config("tiny"))
    sd = dict(tiny_model.state_dict(), **{"something.else": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="something.else"):
        load_model(sd, config=get_config("tiny"))
    with pytest.raises(CheckpointError, match="time_mlp_x"):
        load_model({"foo": torch.zeros(1)})


def test_mismatched_config_is_reported(tiny_model):
    with pytest.raises(CheckpointError, match="shape"):
        load_model(tiny_model.state_dict(), config=get_config("tiny").replace(dim_x=16))


def test_nan_weights_rejected(tiny_model):
    sd = dict(tiny_model.state_dict())
    sd["final_conv.bias"] = torch.tensor([float("nan")])
    with pytest.raises(CheckpointError, match="NaN"):
        load_model(sd, config=get_config("tiny"))


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled arbitrary code",))


def test_arbitrary_pickles_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": _Evil()}, path)
    with pytest.raises(CheckpointError, match="weights-only"):
        load_model(path)


def test_unreadable_files(tmp_path):
    with pytest.raises(CheckpointError, match="no such"):
        load_model(tmp_path / "absent.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="safetensors"):
        load_model(bad)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00\x01garbage")
    with pytest.raises(CheckpointError):
        load_model(junk)


def _msd_tiny_state_dict():
    from dsd_fast.families.medsegdiff import MEDSEGDIFF, MSD_CONFIGS
    torch.manual_seed(0)
    return MEDSEGDIFF.build_reference(MSD_CONFIGS["msd_tiny"]).state_dict()


def test_an_optimizer_state_file_is_named_for_what_it_is(tmp_path):
    """The official MedSegDiff code writes optsavedmodel*.pt (optimizer.state_dict()) beside
    every checkpoint: loading it says so and names the model files to use instead."""
    net = torch.nn.Conv2d(2, 3, 3)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    net(torch.randn(1, 2, 5, 5)).sum().backward()
    opt.step()
    path = tmp_path / "optsavedmodel000100.pt"
    torch.save(opt.state_dict(), path)
    for kw in ({}, {"family": "medsegdiff-official"}):
        with pytest.raises(CheckpointError, match=r"optimizer state.*savedmodel\*\.pt or "
                                                  r"emasavedmodel\*\.pt"):
            dsd_fast.load(path, **kw)


def test_missing_weights_are_counted_and_grouped(tiny_model):
    """A file from another config or version lacks whole blocks: the message counts them,
    groups them by block (prefix up to the first index) and does not blame a config the
    user never gave."""
    sd = dict(tiny_model.state_dict())
    gone = [k for k in sd if k.startswith("encoder_blocks.1.")]
    assert len(gone) > 5
    for k in gone:
        del sd[k]
    sd["extra.0.weight"] = torch.zeros(2)
    sd["extra.1.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointError) as e:
        load_model(sd, config=get_config("tiny"))
    msg = str(e.value)
    assert f"lacks {len(gone)} of the {len(tiny_model.state_dict())} weights" in msg, msg
    assert f"encoder_blocks.1.*: {len(gone)} tensors" in msg, msg
    assert "has 2 weights" in msg and "extra.0.*: 1 tensor" in msg and "extra.1.*" in msg
    assert "another config or another version" in msg


def test_key_groups():
    from dsd_fast.weight_keys import grouped, key_group
    assert key_group("downs.3.1.block1.proj.weight") == "downs.3.*"
    assert key_group("init_conv.weight") == "init_conv.*"
    assert key_group("betas") == "betas"
    many = [f"g{i}.0.w" for i in range(9)] + ["g0.0.b"]
    assert grouped(many) == ("g0.0.*: 2 tensors, g1.0.*: 1 tensor, g2.0.*: 1 tensor, "
                             "g3.0.*: 1 tensor, g4.0.*: 1 tensor, g5.0.*: 1 tensor and 3 "
                             "more groups")


def test_medsegdiff_files_without_their_T_warn_what_was_assumed(tmp_path):
    """med-seg-diff-pytorch's driver stores T nowhere: loading a bare Unet state dict says
    it assumed timesteps=1000, as the other families announce theirs; given, silent."""
    import warnings

    from dsd_fast.families.medsegdiff.checkpoint import AssumedSettingsWarning
    path = tmp_path / "unet.pt"
    torch.save(_msd_tiny_state_dict(), path)
    with pytest.warns(AssumedSettingsWarning, match="timesteps=1000"):
        pipe = dsd_fast.load(path)
    assert pipe.schedule.T == 1000
    with warnings.catch_warnings():
        warnings.simplefilter("error", AssumedSettingsWarning)
        assert dsd_fast.load(path, timesteps=20).schedule.T == 20


def test_diffseg_assumed_settings_name_the_image_size(tmp_path):
    from dsd_fast.families.diffseg import DIFFSEG, DIFFSEG_CONFIGS
    from dsd_fast.families.diffseg.checkpoint import AssumedSettingsWarning
    torch.manual_seed(0)
    sd = DIFFSEG.build_reference(DIFFSEG_CONFIGS["diffseg_tiny"]).state_dict()
    with pytest.warns(AssumedSettingsWarning, match="image_size=128") as record:
        load_model(sd, timesteps=1000, input_range="-1..1", num_heads=4)
    assert "image_size=" in str(record[0].message)


def test_a_model_with_few_timesteps_segments_without_steps_given(tmp_path):
    """T = 20 (med-seg-diff-pytorch's driver --timesteps 20), no steps given: the default 25
    steps give way to 20 with a note, and DDPM (which walks all T steps) checks no steps."""
    import numpy as np

    from dsd_fast.segmenter import SegmentNote
    path = tmp_path / "unet.pt"
    torch.save(_msd_tiny_state_dict(), path)
    pipe = dsd_fast.load(path, timesteps=20)
    image = np.random.default_rng(0).integers(0, 255, (20, 24, 3), dtype=np.uint8)
    with pytest.warns(SegmentNote, match="exceed this model's T = 20"):
        ddim = pipe.segment([image], ensemble=1)[0]
    assert ddim.mask.shape == (20, 24)
    assert pipe.segment([image], ensemble=1, sampler="ddpm")[0].mask.shape == (20, 24)
    with pytest.raises(ValueError, match=r"1\.\.20"):             # given: the user's to fix
        pipe.segment([image], ensemble=1, steps=25)
