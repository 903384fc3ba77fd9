"""bench/time_models.py: which images time a model, and one run of its report line."""
from __future__ import annotations

import sys

import pytest
from eval_sources import DATA
from time_models import SAMPLES, images_for, main


def test_images_for_the_skin_models_are_the_samples():
    assert images_for("default", 2) == sorted(
        p for p in SAMPLES.iterdir() if p.suffix in (".png", ".jpg"))[:2]


def test_images_for_a_modality_model_are_its_val_images():
    if not (DATA / "ddti" / "val.txt").is_file():
        pytest.skip("../shared/data/ddti is not beside this checkout")
    first = (DATA / "ddti" / "val.txt").read_text().split()[0]
    assert [p.stem for p in images_for("thyroid-ultrasound", 1)] == [first]


def test_report_line(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["time_models.py", "--models", "default", "--images",
                                      "1", "--threads", "1"])
    main()
    out = capsys.readouterr().out
    assert out.startswith("default: ") and "25 members x 5 trailing steps, 1 threads" in out
