"""The `dsd-fast` command on a terminal (issue "Hardening 2", items 11, 13, 15, 17): a reader
that stops reading, Ctrl-C while the package imports, --threads above the cores, warnings as
one plain line (Ray's output: test_ray_terminal.py). Each case failed before its fix.
"""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from dsd_fast.cli import console, main

REPO = Path(__file__).absolute().parents[2]


def _env(extra_path: Path | None = None) -> dict:
    """The environment of a `python -m dsd_fast.cli` child: this checkout first on the path
    (and `extra_path` before it), one thread."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    paths = [str(p) for p in (extra_path, REPO) if p is not None]
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _mask_folders(tmp_path: Path) -> tuple[Path, Path]:
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir(), gt.mkdir()
    m = np.zeros((16, 16), np.uint8)
    m[4:12, 4:12] = 255
    for i in range(3):
        Image.fromarray(m).save(pred / f"c{i}_mask.png")
        Image.fromarray(m).save(gt / f"c{i}.png")
    return pred, gt


def test_closed_stdout_ends_quietly(tmp_path):
    """`dsd-fast eval ... | head -0`: no BrokenPipeError traceback or 'Exception ignored'
    (the summary is written after the reader has gone), exit 141 as for SIGPIPE."""
    pred, gt = _mask_folders(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "dsd_fast.cli", "eval", "--pred", str(pred),
                             "--gt", str(gt), "--out", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), cwd=tmp_path)
    proc.stdout.close()                            # the reader leaves before anything is written
    err = proc.stderr.read().decode()
    code = proc.wait(timeout=300)
    assert "Traceback" not in err and "BrokenPipe" not in err and "Broken pipe" not in err, err
    assert code == console.EXIT_BROKEN_PIPE
    assert (tmp_path / "metrics.csv").exists()     # the work itself was done


def test_ctrl_c_while_importing_prints_one_line(tmp_path):
    """SIGINT while `import torch` runs (made certain by a sitecustomize that sends it the
    moment torch is looked up): `interrupted` and exit 130, not a 44-line traceback."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(textwrap.dedent("""
        import os, signal, sys

        class _InterruptAtTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch":
                    sys.meta_path.remove(self)
                    os.kill(os.getpid(), signal.SIGINT)
                return None

        sys.meta_path.insert(0, _InterruptAtTorch())
    """))
    proc = subprocess.run([sys.executable, "-m", "dsd_fast.cli", "doctor", "--no-timing"],
                          capture_output=True, text=True, env=_env(hook), timeout=300)
    # the exit status and stdout in the message too: it once failed with an empty stderr
    # under load (a full-suite run), and they say whether the SIGINT arrived at all
    assert proc.stderr.strip() == "interrupted", (proc.returncode, proc.stdout[-1000:],
                                                  proc.stderr[-2000:])
    assert proc.returncode == console.EXIT_INTERRUPTED
    # a library user's process is left alone: the traceback is theirs to see
    lib = subprocess.run([sys.executable, "-c", "import dsd_fast"], capture_output=True,
                         text=True, env=_env(hook), timeout=300)
    assert "KeyboardInterrupt" in lib.stderr


def test_ctrl_c_in_a_command_prints_one_line(tmp_path, monkeypatch, capsys):
    pred, gt = _mask_folders(tmp_path)

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr("dsd_fast.cli.evaluate.evaluate_folders", interrupted)
    assert main(["eval", "--pred", str(pred), "--gt", str(gt), "--out", str(tmp_path)]) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_threads_above_the_cores_are_capped_with_one_line(monkeypatch, capsys):
    monkeypatch.setattr(console, "available_cores", lambda: 2)
    assert console.cap_threads(1000) == 2
    assert capsys.readouterr().err == ("warning: --threads 1000 is more than the 2 CPU cores "
                                       "this process can use; using 2\n")
    assert console.cap_threads(2) == 2 and console.cap_threads(None) is None
    assert capsys.readouterr().err == ""
    assert console.available_cores() >= 1


def test_threads_are_capped_on_the_command_line(tmp_path, monkeypatch, capsys):
    cli_main = importlib.import_module("dsd_fast.cli.main")     # the module, not main()
    seen = {}
    monkeypatch.setattr(console, "available_cores", lambda: 2)
    monkeypatch.setattr(cli_main, "cmd_segment", lambda args: seen.setdefault("t", args.threads)
                        and 0)
    assert main(["segment", str(tmp_path), "-o", str(tmp_path / "o"), "--threads", "1000"]) == 0
    assert seen["t"] == 2
    assert "warning: --threads 1000 is more than the 2 CPU cores" in capsys.readouterr().err
    seen.clear()                      # with --ray the threads are per worker: left as given
    assert main(["segment", str(tmp_path), "-o", str(tmp_path / "o"), "--threads", "1000",
                 "--ray"]) == 0
    assert seen["t"] == 1000


def test_warnings_print_as_one_plain_line(tmp_path, monkeypatch, capsys):
    """e.g. AssumedSettingsWarning: `warning: <message>`, not Python's `file:line: Category:
    message` with the source line under it."""
    class AssumedSettingsWarning(UserWarning):
        pass

    def segment_that_warns(args):
        warnings.warn("model.pt: no timesteps stored;\n  assumed T = 1000",
                      AssumedSettingsWarning)
        warnings.warn("model.pt: no timesteps stored;\n  assumed T = 1000",   # said twice:
                      AssumedSettingsWarning)                                  # printed once
        return 0
    monkeypatch.setattr(importlib.import_module("dsd_fast.cli.main"), "cmd_segment",
                        segment_that_warns)
    assert main(["segment", str(tmp_path), "-o", str(tmp_path / "o")]) == 0
    assert capsys.readouterr().err == "warning: model.pt: no timesteps stored; assumed T = 1000\n"
    assert getattr(warnings.showwarning, "func", None) is not console._print_warning  # put back

