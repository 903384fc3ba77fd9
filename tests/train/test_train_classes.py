"""Training a model of several classes (#35 item 3): per-class mask files (<stem>_disc.png,
<stem>_cup.png, soft maps binarised at > 127), x0 (B, K, S, S), the boundary loss per class
channel, validation Dice per class, the classes saved in the model file."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import dsd_fast
from dsd_fast.checkpoint import read_metadata
from dsd_fast.cli.main import main
from dsd_fast.families.dermosegdiff.loss import boundary_weight_map
from dsd_fast.train import TrainOptions
from dsd_fast.train.data import load_class_mask, load_pairs, match_pairs


def make_disc_cup_dataset(root, n=6, size=40, soft=True):
    """Fundus-like images: a bright disc with a brighter cup inside; per-class soft masks
    as Drishti-GS stores them (64 = 1 of 4 experts at the rim, 255 inside)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[:size, :size]
    stems = []
    for i in range(n):
        cy, cx = rng.integers(14, size - 14, 2)
        r = np.hypot(yy - cy, xx - cx)
        disc, cup = r < 10, r < 5
        img = np.full((size, size, 3), 60, np.uint8)
        img[disc] = 160
        img[cup] = 240
        img = np.clip(img + rng.integers(0, 20, img.shape), 0, 255).astype(np.uint8)
        stem = f"eye{i}"
        Image.fromarray(img).save(root / "images" / f"{stem}.png")
        for name, region, rim in (("disc", disc, (r >= 10) & (r < 11)),
                                  ("cup", cup, (r >= 5) & (r < 6))):
            m = region.astype(np.uint8) * 255
            if soft:
                m[rim] = 64                     # one expert of four: below the majority
            Image.fromarray(m).save(root / "masks" / f"{stem}_{name}.png")
        stems.append(stem)
    (root / "train.txt").write_text("\n".join(stems[:-2]) + "\n")
    (root / "val.txt").write_text("\n".join(stems[-2:]) + "\n")
    return root


def test_class_masks_are_matched_and_binarised_at_the_majority(tmp_path):
    root = make_disc_cup_dataset(tmp_path / "d", n=3)
    pairs = match_pairs(root / "images", root / "masks", None, ("disc", "cup"))
    assert [p[0] for p in pairs] == ["eye0", "eye1", "eye2"]
    assert [q.name for q in pairs[0][2]] == ["eye0_disc.png", "eye0_cup.png"]
    m = load_class_mask(root / "masks" / "eye0_disc.png")
    assert m.dtype == torch.bool and 0 < int(m.sum()) < m.numel()
    soft = np.array([[0, 64, 127, 128, 191, 255]], np.uint8)
    Image.fromarray(soft).save(tmp_path / "soft.png")
    assert load_class_mask(tmp_path / "soft.png").tolist() == \
        [[False, False, False, True, True, True]]
    samples = load_pairs(pairs, 16)
    assert samples[0].mask.shape == (2, 16, 16) and samples[0].original_mask.shape == (2, 40, 40)
    # the cup lies inside the disc
    assert bool((samples[0].original_mask[1] <= samples[0].original_mask[0]).all())
    (root / "masks" / "eye1_cup.png").unlink()
    with pytest.raises(ValueError, match="lack a class mask, e.g. 'eye1': no eye1_cup"):
        match_pairs(root / "images", root / "masks", None, ("disc", "cup"))


def test_boundary_weights_per_class_channel():
    x0 = -torch.ones(2, 2, 16, 16)
    x0[:, 0, 2:14, 2:14] = 1
    x0[:, 1, 6:10, 6:10] = 1
    t = torch.tensor([10, 900])
    w = boundary_weight_map(x0, t, 1000)
    assert w.shape == (2, 2, 16, 16)
    # each channel's map is the published map of that channel's mask alone
    for c in range(2):
        one = boundary_weight_map(x0[:, c:c + 1], t, 1000)
        torch.testing.assert_close(w[:, c:c + 1], one, rtol=0, atol=0)
    assert not torch.equal(w[:, 0], w[:, 1])     # the cup's rim, not the disc's


def test_train_options_check_the_classes_against_the_config(tmp_path):
    base = dict(image_dir="/x", mask_dir="/y", out_dir=str(tmp_path))
    with pytest.raises(ValueError, match="segments 2 classes .* give the class names"):
        TrainOptions(config="tiny_2class", **base)
    with pytest.raises(ValueError, match="segments 1 class .* 2 classes were given"):
        TrainOptions(config="tiny_ff", classes=["disc", "cup"], **base)
    src = [{"name": "a", "images": "/x", "masks": "/y", "classes": "disc+cup"},
           {"name": "b", "images": "/x", "masks": "/y", "classes": "cup+disc"}]
    with pytest.raises(ValueError, match="same classes"):
        TrainOptions(None, None, str(tmp_path), sources=src, config="tiny_2class")
    ok = TrainOptions(None, None, str(tmp_path), sources=src[:1], config="tiny_2class")
    assert ok.classes == ["disc", "cup"]


def test_two_class_training_writes_a_model_with_its_classes(tmp_path, capsys):
    root = make_disc_cup_dataset(tmp_path / "drishti")
    run = tmp_path / "run"
    src = (f"name=drishti,images={root}/images,masks={root}/masks,train={root}/train.txt,"
           f"val={root}/val.txt,classes=disc+cup")
    rc = main(["train", "--source", src, "--config", "tiny_2class", "--out", str(run),
               "--steps", "2", "--batch-size", "2", "--val-every", "2", "-q"])
    assert rc == 0, capsys.readouterr().err
    meta = read_metadata(run / "best.safetensors")
    assert json.loads(meta["classes"]) == ["disc", "cup"] and meta["classes_nested"] == "true"
    events = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    per_class = [e["val_dice_per_class"] for e in events if "val_dice_per_class" in e][-1]
    assert set(per_class["drishti"]) == {"disc", "cup"}
    val = [e["val_dice"] for e in events if "val_dice" in e][-1]
    assert val == pytest.approx(sum(per_class["drishti"].values()) / 2)   # selection: mean
    pipe = dsd_fast.load(run / "best.safetensors")
    assert pipe.classes == ("disc", "cup")
    res = pipe.segment([str(root / "images" / "eye0.png")], steps=2, ensemble=2)[0]
    assert res.mask.dtype == np.uint8 and res.probability.shape == (2, 40, 40)
    # the run's current EMA, exported (bench/export_ema.py), keeps the class names
    from dsd_fast.train.export import export_ema
    exported = dsd_fast.load(export_ema(run, tmp_path / "ema.safetensors"))
    assert exported.classes == ("disc", "cup") and exported.nested


def test_two_class_training_from_folders_with_classes_option(tmp_path, capsys):
    root = make_disc_cup_dataset(tmp_path / "d", n=4)
    run = tmp_path / "run"
    rc = main(["train", "--images", str(root / "images"), "--masks", str(root / "masks"),
               "--classes", "disc+cup", "--config", "tiny_2class", "--augment", "strong",
               "--out", str(run), "--steps", "2", "--batch-size", "2", "-q"])
    assert rc == 0, capsys.readouterr().err
    assert json.loads(read_metadata(run / "best.safetensors")["classes"]) == ["disc", "cup"]
