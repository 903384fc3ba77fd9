"""crop="zoom"'s zoom_passes (options.py, pipeline.py, cli/run_settings.py): 2 by default
(the two-pass zoom), 3 opt-in (test_zoom_third_pass.py tests what the third pass does); a
model file's "zoom_passes" metadata is the default and a call's value overrides it; bad
values and 3 without zoom are errors; the command line's --zoom-passes runs what the API
runs and results.json records it only when 3, so two-pass folders made before still match
on resume; the resume note names a setting recorded on one side only.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import dsd_fast
from dsd_fast.checkpoint import read_metadata
from dsd_fast.cli.errors import UsageError
from dsd_fast.cli.run import segment_files, settings_difference
from dsd_fast.errors import CheckpointError
from dsd_fast.options import Choices, SegmentOptions, resolve

from test_zoom_outside import _cli, _file, _image


def _settings(folder) -> dict:
    return json.loads((folder / "results.json").read_text())["settings"]


def test_resolve_takes_the_call_s_then_the_file_s_then_2():
    own = Choices(zoom_passes=3)
    assert resolve(SegmentOptions(crop="zoom"), own).zoom_passes == 3
    assert resolve(SegmentOptions(crop="zoom", zoom_passes=2), own).zoom_passes == 2
    assert resolve(SegmentOptions(crop="zoom"), Choices()).zoom_passes == 2
    # the file's own does not apply (nor fail) without zoom; 2 is always accepted
    assert resolve(SegmentOptions(crop="full"), own).zoom_passes == 2
    assert resolve(SegmentOptions(crop="full", zoom_passes=2), own).zoom_passes == 2
    with pytest.raises(ValueError, match="zoom_passes=3 applies to crop='zoom'"):
        resolve(SegmentOptions(crop="full", zoom_passes=3), Choices())
    assert SegmentOptions(zoom_passes=np.int64(3)).zoom_passes == 3


def test_a_file_s_zoom_passes_is_the_default_and_a_call_overrides_it(tmp_path):
    image = _image(tmp_path)
    plain = dsd_fast.load(_file(tmp_path, "plain", crop="zoom"))
    own = dsd_fast.load(_file(tmp_path, "own", crop="zoom", zoom_passes="3"))
    assert own.zoom_passes_default == 3 and plain.zoom_passes_default is None
    kw = dict(steps=2, ensemble=3, noise_keys=["case"], postprocess="none")
    three = plain.segment(image, zoom_passes=3, **kw)[0]
    two = plain.segment(image, **kw)[0]
    np.testing.assert_array_equal(own.segment(image, **kw)[0].probability, three.probability)
    back = own.segment(image, zoom_passes=2, **kw)[0]
    assert back.zoom == two.zoom and "pass2_box" not in two.zoom
    np.testing.assert_array_equal(back.probability, two.probability)
    assert "pass2_box" in three.zoom
    again = dsd_fast.save_model(own, tmp_path / "again.safetensors")
    assert read_metadata(again)["zoom_passes"] == "3"


@pytest.mark.parametrize("bad", ["4", "three", "2.0"])
def test_a_file_s_zoom_passes_must_be_one_of_the_choices(tmp_path, bad):
    with pytest.raises(CheckpointError, match=f"zoom_passes metadata '{bad}' is not one "
                                              "of 2, 3"):
        dsd_fast.load(_file(tmp_path, zoom_passes=bad))


def test_the_command_line_runs_the_api_s_passes_and_records_3_only(tmp_path):
    image, model = _image(tmp_path), _file(tmp_path, crop="zoom")
    assert _cli(tmp_path, image, model, "--zoom-passes", "3") == 0
    assert _settings(tmp_path / "out")["zoom_passes"] == 3
    res = dsd_fast.load(model).segment(image, steps=2, ensemble=3, noise_keys=["case"],
                                       batch_size=1, zoom_passes=3)[0]
    prob = np.array(Image.open(tmp_path / "out" / "case_prob.png")) / 65535
    np.testing.assert_allclose(prob, res.probability, atol=1 / 65535)
    rec = json.loads((tmp_path / "out" / "results.json").read_text())["images"][0]
    assert rec["zoom"]["box"] == res.zoom["box"]
    assert rec["zoom"].get("pass2_box") == res.zoom.get("pass2_box")
    # 2 (given or the default) is not recorded: folders from before the option match
    for flags, out in (([], "plain"), (["--zoom-passes", "2"], "two")):
        assert _cli(tmp_path, image, model, *flags, out=out) == 0
        assert "zoom_passes" not in _settings(tmp_path / out)
        zoom = json.loads((tmp_path / out / "results.json").read_text())["images"][0]["zoom"]
        assert "pass2_box" not in zoom


def test_the_command_line_takes_the_file_s_own_and_the_flag_overrides_it(tmp_path):
    image = _image(tmp_path)
    model = _file(tmp_path, crop="zoom", zoom_passes="3")
    assert _cli(tmp_path, image, model) == 0
    assert _settings(tmp_path / "out")["zoom_passes"] == 3
    assert _cli(tmp_path, image, model, "--zoom-passes", "2", out="asked") == 0
    assert "zoom_passes" not in _settings(tmp_path / "asked")
    assert _cli(tmp_path, image, model, "--crop", "full", out="full") == 0
    assert "zoom_passes" not in _settings(tmp_path / "full")


def test_the_command_line_rejects_3_without_zoom_and_bad_values(tmp_path, capsys):
    image, model = _image(tmp_path), _file(tmp_path)
    for flags in (["--zoom-passes", "3"], ["--crop", "full", "--zoom-passes", "3"]):
        assert _cli(tmp_path, image, model, *flags) == 2
        assert "--zoom-passes 3 applies to --crop zoom" in capsys.readouterr().err
        assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):
        _cli(tmp_path, image, model, "--zoom-passes", "4")
    assert "invalid choice: 4" in capsys.readouterr().err


def test_segment_files_names_a_bad_value_by_its_flag(tmp_path):
    """segment_files checks its options once; the message names the command line's flag
    (--zoom-outside, --zoom-passes), not the Python argument."""
    image, model = _image(tmp_path), _file(tmp_path, crop="zoom")
    for name, flag, bad in (("zoom_outside", "--zoom-outside", "none"),
                            ("zoom_passes", "--zoom-passes", 4)):
        with pytest.raises(UsageError, match=f"^{flag} must be None or one of"):
            segment_files([image], tmp_path / "out", checkpoint=model, **{name: bad})


def test_the_resume_note_names_a_setting_recorded_on_one_side_only(tmp_path, capsys):
    """A folder made with --zoom-outside background (recorded) resumed without the flag
    (the default, not recorded): the note says what differs (it printed "()")."""
    image, model = _image(tmp_path), _file(tmp_path, crop="zoom")
    assert _cli(tmp_path, image, model, "--zoom-outside", "background") == 0
    capsys.readouterr()
    assert _cli(tmp_path, image, model) == 0
    err = capsys.readouterr().err
    assert "1 finished image(s) were made with other settings (zoom_outside background " \
           "instead of the default)" in err, err
    assert settings_difference({"steps": 3}, {"steps": 5, "zoom_passes": 3}) \
        == "steps 3 instead of 5, zoom_passes the default instead of 3"
    assert settings_difference({"a": None}, {}) == "a None instead of the default"
    assert settings_difference({"a": 1}, {"a": 1}) == ""


def test_a_run_reads_its_model_file_s_defaults_once(tmp_path, monkeypatch):
    """resolve_run_sampling takes crop, zoom_outside, zoom_passes, the sampler defaults
    and the clean-up from one read of the file's header (it read it three times)."""
    import dsd_fast.checkpoint as checkpoint
    from dsd_fast.cli.run_settings import resolve_run_sampling
    from dsd_fast.cli.worker import BatchOptions
    model = _file(tmp_path, crop="zoom", zoom_outside="background", zoom_passes="3",
                  postprocess="largest")
    reads = []
    real = checkpoint.read_metadata
    monkeypatch.setattr(checkpoint, "read_metadata", lambda p: reads.append(p) or real(p))
    opts = BatchOptions(output=tmp_path / "out", checkpoint=model, steps=2, ensemble=3,
                        spacing="trailing")
    resolve_run_sampling(opts, None)
    assert len(reads) == 1
    assert (opts.crop, opts.zoom_outside, opts.zoom_passes, opts.postprocess) \
        == ("zoom", "background", 3, "largest")
