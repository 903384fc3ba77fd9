"""Several training sources with weights, the strong augmentation, per-source validation."""
import json

import pytest
import torch

from dsd_fast.cli.main import main
from dsd_fast.train import TrainOptions, Trainer
from dsd_fast.train.augment import StrongAugment, strong_augment
from dsd_fast.train.data import Sample
from dsd_fast.train.sources import MixedBatches, parse_source

from test_loop import make_disc_dataset


def test_parse_source_reads_every_key_and_names_bad_ones():
    s = parse_source("name=ph2,images=/a,masks=/b,train=/t.txt,val=/v.txt,weight=0.3,val_limit=5")
    assert (s.name, s.images, s.masks, s.train, s.val, s.weight, s.val_limit) == \
        ("ph2", "/a", "/b", "/t.txt", "/v.txt", 0.3, 5)
    with pytest.raises(ValueError, match="keys"):
        parse_source("name=a,images=/a,masks=/b,colour=red")
    with pytest.raises(ValueError, match=r"missing \['masks'\]"):
        parse_source("name=a,images=/a")
    with pytest.raises(ValueError, match="weight must be > 0"):
        parse_source("name=a,images=/a,masks=/b,weight=0")
    with pytest.raises(ValueError, match="weight must be a number"):
        parse_source("name=a,images=/a,masks=/b,weight=lots")


def _const_samples(value, n, size):
    img = torch.full((3, size, size), value)
    return [Sample(f"{value}-{i}", img, torch.zeros(1, size, size),
                   torch.zeros(size, size, dtype=torch.bool), (size, size)) for i in range(n)]


def test_mixed_batches_draw_sources_by_weight():
    # Source A's images are 0.2 grey, B's 0.8: count which source each batch image came from.
    a, b = _const_samples(0.2, 3, 8), _const_samples(0.8, 50, 8)
    gen = torch.Generator().manual_seed(0)
    mb = MixedBatches([a, b], [3.0, 1.0], 8, 64, gen, augmentation="none", normalise=False)
    from_a = 0
    for _ in range(20):
        img, x0 = mb.next()
        assert img.shape == (64, 3, 8, 8) and x0.shape == (64, 1, 8, 8)
        from_a += int((img[:, 0, 0, 0] < 0.5).sum())
    share = from_a / (20 * 64)
    assert 0.70 < share < 0.80, share        # 3:1 -> 0.75, though A has 3 images and B 50


def test_strong_augment_moves_image_and_mask_together():
    # A bright square whose mask is the square: after any geometry, the mask must still sit
    # on the bright pixels (colour changes keep bright > dark; hair can cover a few pixels).
    size = 32
    img = torch.full((6, 3, 2 * size, 2 * size), 0.1)
    img[:, :, 20:44, 24:40] = 0.9
    msk = (img[:, :1] > 0.5).float()
    cfg = StrongAugment(hair_p=0.0, ring_p=0.0, vignette_p=0.0)
    out, m = strong_augment(img, msk, size, torch.Generator().manual_seed(3), cfg)
    assert out.shape == (6, 3, size, size) and m.shape == (6, 1, size, size)
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    for i in range(6):
        inside = out[i].mean(0)[m[i, 0] > 0]
        outside = out[i].mean(0)[m[i, 0] == 0]
        assert inside.numel() and outside.numel()
        assert inside.min() > outside.max() - 0.05, i   # edge pixels blend a little


def test_strong_augment_zooms_in_enough_to_overflow_the_frame():
    size = 16
    img = torch.rand(64, 3, 2 * size, 2 * size)
    msk = torch.zeros(64, 1, 2 * size, 2 * size)
    msk[:, :, 6:26, 6:26] = 1                    # lesion covers ~39% of the source
    _, m = strong_augment(img, msk, size, torch.Generator().manual_seed(0))
    cover = m.mean(dim=(1, 2, 3))
    assert cover.max() > 0.9 and cover.min() < 0.3, (cover.min(), cover.max())


def test_two_sources_train_and_validate_per_source(tmp_path, capsys):
    a = make_disc_dataset(tmp_path / "a")
    b = make_disc_dataset(tmp_path / "b", n=5)
    run = tmp_path / "run"
    spec = "name={n},images={r}/images,masks={r}/masks,train={r}/train.txt,val={r}/val.txt,weight={w}"
    rc = main(["train", "--source", spec.format(n="a", r=a, w=1),
               "--source", spec.format(n="b", r=b, w=2) + ",val_limit=1",
               "--augment", "strong", "--out", str(run), "--config", "tiny_ff", "--steps", "4",
               "--batch-size", "2", "--val-every", "2", "-q"])
    assert rc == 0, capsys.readouterr().err
    events = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    per = [e["val_dice_per_source"] for e in events if "val_dice_per_source" in e]
    assert per and set(per[-1]) == {"a", "b"}
    mean = [e["val_dice"] for e in events if "val_dice" in e][-1]
    assert mean == pytest.approx((per[-1]["a"] + per[-1]["b"]) / 2)
    assert (run / "best.safetensors").exists()


def test_sources_and_single_folder_options_exclude_each_other(tmp_path):
    src = {"name": "a", "images": "/x", "masks": "/y"}
    with pytest.raises(ValueError, match="not both"):
        TrainOptions(image_dir="/x", mask_dir="/y", out_dir=str(tmp_path), sources=[src])
    with pytest.raises(ValueError, match="names must differ"):
        TrainOptions(image_dir=None, mask_dir=None, out_dir=str(tmp_path), sources=[src, src])
    with pytest.raises(ValueError, match="image_dir and mask_dir, or sources"):
        TrainOptions(image_dir=None, mask_dir=None, out_dir=str(tmp_path))


def test_warm_start_restarts_the_ema_warmup(tmp_path):
    from test_loop import options
    root = make_disc_dataset(tmp_path / "data")
    first = Trainer(options(root, tmp_path / "a", total_steps=20), log=lambda *_: None)
    first.run(progress=False)
    best = str(tmp_path / "a" / "best.safetensors")       # validated at step 20
    again = Trainer(options(root, tmp_path / "b", total_steps=22, init_from=best),
                    log=lambda *_: None)
    assert again.step == 20 and again.ema_origin == 20
    again.train_step()        # step 21: inside the restarted warm-up, the EMA copies the model
    for k, v in again.model.state_dict().items():
        assert torch.equal(again.ema.shadow[k], v), k
    again.save()
    resumed = Trainer(options(root, tmp_path / "b", total_steps=22), log=lambda *_: None)
    assert resumed.step == 21 and resumed.ema_origin == 20
