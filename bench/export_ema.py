"""Write a training run's current EMA weights (RUN/last.pt) as a model file, to evaluate or
bundle a step other than best.safetensors' (dsd_fast/train/export.py).

    python bench/export_ema.py RUN OUT.safetensors
"""
from __future__ import annotations

import argparse

from dsd_fast.model_files import read_metadata
from dsd_fast.train.export import export_ema


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="run folder of dsd-fast train (last.pt, best.safetensors)")
    ap.add_argument("out", help="the .safetensors file to write")
    args = ap.parse_args()
    path = export_ema(args.run, args.out)
    print(f"{path}: the EMA at step {read_metadata(path)['step']}")


if __name__ == "__main__":
    main()
