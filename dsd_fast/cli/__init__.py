"""The `dsd-fast` command line (`python -m dsd_fast.cli` runs it too).

    main.py        argument parsing: segment, eval, train
    run.py         `segment`: the run loop, resume, failures, exit codes
    discover.py    its inputs: files, folders, globs -> keys; decoding into network inputs
    outputs.py     its outputs: maps, overlays, records, results.json/csv, the lock
    memory.py      how many images fit in one network batch
    report.py      the index.html report;  visualise.py  overlays and heatmaps
    evaluate.py    `eval`: scoring predicted masks against ground truth
    errors.py      why a run stops early
    console.py     on a terminal: one-line warnings, --threads cap, Ctrl-C, `| head`
"""
from .main import build_parser, main

__all__ = ["main", "build_parser"]
