"""The HTML report of `dsd-fast segment` (dsd_fast/report.py): self-contained, sortable, and
rendered by a real headless browser (Debian's chromium) when one is installed."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dsd_fast import save_model
from dsd_fast.cli import main
from dsd_fast.cli.report import render_report

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser",
                                               "google-chrome")) if p), None)
URL = re.compile(r"https?://", re.IGNORECASE)


def _record(key, unc, dice=None, size=(40, 60)):
    return {"key": key, "width": size[1], "height": size[0], "area_fraction": 0.25,
            "mean_uncertainty": unc, "metrics": None if dice is None else {"dice": dice},
            "outputs": {"mask": f"{key}_mask.png", "overlay": f"{key}_overlay.png"},
            "thumbnail": "data:image/jpeg;base64,AAAA", "thumbnail_size": list(size)}


def test_render_report_is_self_contained_and_escaped():
    records = [_record("a", 0.1, 0.9), _record("sub/b c#1", 0.3, float("inf")),
               _record("x<y>", 0.2, 0.5, size=(1, 1))]
    page = render_report(records, [("in/<bad>.png", "in/<bad>.png: corrupt")],
                         {"title": "t", "settings": {"steps": 2}, "counts": {"failed": 1}})
    assert not URL.search(page)
    assert "<script>" in page and "<style>" in page and "src=\"data:image/jpeg;base64," in page
    assert 'data-sort="dice"' in page                     # ground truth: Dice sorting
    assert 'data-dice=""' in page                         # a non-finite Dice sorts last
    assert "x&lt;y&gt;" in page and "<bad>" not in page and "&lt;bad&gt;.png" in page
    assert 'href="sub/b%20c%231_overlay.png"' in page     # relative, URL-quoted links
    assert 'class="px"' in page                           # the 1 x 1 image is enlarged
    plain = render_report([_record("a", 0.1)], [], {"title": "t"})
    assert 'data-sort="dice"' not in plain and 'data-sort="unc"' in plain


def _lesion_image(h, w, seed):
    """A skin-coloured image with a dark elliptical 'lesion', and its mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    cy, cx = h * rng.uniform(0.35, 0.65), w * rng.uniform(0.35, 0.65)
    ry, rx = h * rng.uniform(0.15, 0.3), w * rng.uniform(0.15, 0.3)
    mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
    skin = np.array([222, 170, 140]) + rng.integers(-10, 10, 3)
    img = np.where(mask[..., None], skin * rng.uniform(0.3, 0.5), skin)
    img = img + rng.normal(0, 6, img.shape)
    return img.clip(0, 255).astype(np.uint8), mask


@pytest.fixture
def report_run(tmp_path, tiny_model):
    src, gt, out = tmp_path / "in", tmp_path / "gt", tmp_path / "out"
    src.mkdir(), gt.mkdir()
    for i, (h, w) in enumerate([(120, 160), (90, 90), (200, 150), (40, 300), (64, 48)]):
        img, mask = _lesion_image(h, w, i)
        Image.fromarray(img).save(src / f"lesion{i}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(gt / f"lesion{i}.png")
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    ckpt = save_model(tiny_model, tmp_path / "m.safetensors")
    rc = main(["segment", str(src), "-o", str(out), "--checkpoint", str(ckpt), "--gt", str(gt),
               "--steps", "2", "--ensemble", "3", "--threads", "1", "-q"])
    assert rc == 1                                         # broken.jpg failed
    return out


def test_report_of_a_run(report_run):
    page = (report_run / "index.html").read_text()
    assert not URL.search(page), "the report must not reference the network"
    assert page.count('src="data:image/jpeg;base64,') == 5
    assert 'data-sort="dice"' in page and "broken.jpg" in page and "Failed (1)" in page
    for name in re.findall(r'href="([^"]+)"', page):
        assert (report_run / name).is_file(), name           # links resolve locally


def _chromium(*args, tmp: Path) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={tmp / 'chromium-profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HOME": str(tmp)})


@pytest.mark.skipif(CHROMIUM is None,
                    reason="chromium is not installed (Debian: apt-get install chromium)")
def test_report_renders_and_sorts_in_headless_chromium(report_run, tmp_path):
    url = (report_run / "index.html").resolve().as_uri()
    shot = tmp_path / "report.png"
    run = _chromium(f"--screenshot={shot}", "--window-size=1200,900", url, tmp=tmp_path)
    assert shot.is_file(), run.stderr[-2000:]
    if os.environ.get("DSD_REPORT_SCREENSHOT"):             # to look at it by hand
        shutil.copy(shot, os.environ["DSD_REPORT_SCREENSHOT"])
    rgb = np.array(Image.open(shot).convert("RGB"))
    assert rgb.shape == (900, 1200, 3)
    colours = np.unique(rgb.reshape(-1, 3), axis=0)
    assert len(colours) > 200, f"only {len(colours)} colours: blank page?"
    # The thumbnails rendered: skin-coloured and contour-green pixels in the grid, below
    # the header (whose legend also has a green swatch).
    grid = rgb[140:].astype(int)
    skin = (abs(grid[..., 0] - 222) < 30) & (abs(grid[..., 1] - 170) < 30) & \
        (abs(grid[..., 2] - 140) < 30)
    green = (grid[..., 1] > 180) & (grid[..., 0] < 110) & (grid[..., 2] < 110)
    assert skin.sum() > 2000 and green.sum() > 20

    # Sorting runs in the browser: '#sort=dice-asc' orders the cards by Dice.
    dom = _chromium("--dump-dom", url + "#sort=dice-asc", tmp=tmp_path).stdout
    assert 'data-sorted="dice-asc"' in dom
    dice = [float(d) for d in re.findall(r'<figure class="card"[^>]*data-dice="([^"]*)"', dom)]
    assert len(dice) == 5 and dice == sorted(dice)
    dom = _chromium("--dump-dom", url, tmp=tmp_path).stdout     # default: most uncertain first
    unc = [float(u) for u in re.findall(r'<figure class="card"[^>]*data-unc="([^"]*)"', dom)]
    assert len(unc) == 5 and unc == sorted(unc, reverse=True)
