"""io.atomic_write: the one writer every file of the package goes through."""
from __future__ import annotations

import os

import pytest

from dsd_fast import io


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(io.TMP_SUFFIX)]


def test_writes_fsyncs_then_renames(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(io.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    target = tmp_path / "sub" / "a.txt"                 # missing folders are made
    assert io.write_text(target, "héllo") == target
    assert target.read_text(encoding="utf-8") == "héllo" and len(synced) == 1
    assert oct(target.stat().st_mode & 0o777) != oct(0o600)   # not mkstemp's private mode
    assert not _leftovers(target.parent)


@pytest.mark.parametrize("error", [ValueError("bad row"), KeyboardInterrupt()])
def test_a_failing_writer_leaves_the_old_file_and_no_temp_file(tmp_path, error):
    target = tmp_path / "results.csv"
    target.write_text("old")

    def write(f):
        f.write(b"half")
        raise error
    with pytest.raises(type(error)):
        io.atomic_write(target, write)
    assert target.read_text() == "old" and not _leftovers(tmp_path)


def test_os_errors_become_write_errors_naming_the_file(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    with pytest.raises(io.WriteError, match="not_a_folder/out.png") as info:
        io.write_text(blocker / "out.png", "y")
    assert isinstance(info.value, OSError)             # callers catching OSError still do

    def full_disk(f):
        raise OSError(28, "No space left on device")
    with pytest.raises(io.WriteError, match=r"m\.json.*No space left"):
        io.atomic_write(tmp_path / "m.json", full_disk)
    assert not _leftovers(tmp_path)


def test_every_writer_uses_it(tmp_path, monkeypatch, tiny_model):
    """save_model, training checkpoints and the eval CSV all go through atomic_write."""
    import torch

    from dsd_fast import save_model
    from dsd_fast.cli.evaluate import write_csv
    seen = []
    real = io.atomic_write
    monkeypatch.setattr(io, "atomic_write", lambda t, w: (seen.append(t.name), real(t, w))[1])
    import dsd_fast.checkpoint as ck
    monkeypatch.setattr(ck, "atomic_write", io.atomic_write)
    save_model(tiny_model, tmp_path / "m.safetensors")
    io.torch_save({"x": torch.zeros(1)}, tmp_path / "last.pt")
    write_csv([], tmp_path / "metrics.csv")
    assert seen == ["m.safetensors", "last.pt", "metrics.csv"]
