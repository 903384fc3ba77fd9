"""bench/bench_table.py: the README's speed table from a saved pytest-benchmark run."""
from __future__ import annotations

import json

import pytest
from bench_table import main, newest_run, table


def _bench(name, median, **info):
    return {"name": name, "stats": {"median": median}, "extra_info": {"weights": "bundled",
                                                                       **info}}


RUN = {"machine_info": {"cpu": {"brand_raw": "Test CPU"}, "torch_threads": 2,
                        "dsd_fast_cpu_isa": "avx512", "torch": "2.13.0"},
       "benchmarks": [
           _bench("test_reference[dermosegdiff]", 0.160),
           _bench("test_fast[dermosegdiff]", 0.050),
           _bench("test_fast_bf16[dermosegdiff]", 0.046),
           _bench("test_onnxruntime[dermosegdiff]", 0.200),
           _bench("test_openvino[dermosegdiff-f32]", 0.150),
           _bench("test_openvino[dermosegdiff-bf16]", 0.120),
           _bench("test_segment[dermosegdiff]", 1.09, steps=5, ensemble=25,
                  spacing="trailing"),
           _bench("test_fast[diffseg]", 0.280),
           _bench("test_segment[diffseg]", 1.5, steps=None, ensemble=5, spacing=None)]}


def test_table_rows():
    lines = table(RUN).splitlines()
    assert lines[0].startswith("Test CPU, 2 torch threads, vector path avx512")
    assert lines[4] == ("| dermosegdiff (bundled) | 160.0 | 50.0 | 46.0 | 200.0 | 150.0 | "
                        "120.0 | 3.00x | 1.09 s (25 members x 5 trailing DDIM steps) |")
    # no peer in the run: no ratio, and the missing engines stay empty
    assert lines[5] == "| diffseg (bundled) |  | 280.0 |  |  |  |  |  | 1.50 s (5 draws) |"
    assert len(lines) == 6                    # one row per family, OpenVINO's two included


def test_newest_run_and_main(tmp_path, capsys):
    with pytest.raises(SystemExit, match="make bench"):
        newest_run(tmp_path)
    (tmp_path / "Linux").mkdir()
    for i in (1, 2):
        (tmp_path / "Linux" / f"000{i}_x.json").write_text(json.dumps(RUN))
    assert newest_run(tmp_path).name == "0002_x.json"
    main([str(tmp_path / "Linux" / "0001_x.json")])
    assert "| dermosegdiff (bundled) |" in capsys.readouterr().out
