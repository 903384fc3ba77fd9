"""Write a trained model file for shipping: a training run's weights (best.safetensors) with
their metadata completed, optionally in half precision.

    python bench/bundle_model.py RUN/best.safetensors OUT.safetensors [--half]
        [--set KEY=VALUE ...] [--drop KEY ...] [--sampler-defaults STEPS,MEMBERS,SPACING
        --measured "what chose it"] [--frontier FRONTIER.json]

Used for the bundled models (dsd_fast/weights/, MODEL_CARD.md) and for the warm starts kept
under checkpoints/. --half stores floating tensors as float16 (the loader computes in
float32 either way; whether Dice is unchanged is measured with bench/eval_sources.py on
both files, not assumed). --set writes metadata strings (training_data, terms, note,
postprocess, crop=zoom for a model that ships with the coarse-to-fine pass, ...);
--sampler-defaults writes the setting segment() uses when a call gives no
steps/ensemble/spacing (options.resolve), with the measurement that chose it; --frontier
keeps bench/steps_frontier.py's rows (Dice and time per setting) as metadata "frontier". The output
is loaded before it is written (atomically), so a file that would not load is never left
behind.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from dsd_fast.io import atomic_write
from dsd_fast.model_files import read_metadata
from dsd_fast.options import parse_setting


def frontier_rows(path: Path) -> str:
    """bench/steps_frontier.py's (or eval_experts.py --frontier's) --out file -> the compact
    JSON kept as metadata "frontier": per setting its steps, members, spacing, val Dice per
    set and seconds per image; and the run's crop / zoom_outside / zoom_passes /
    zoom_boxes where it gave them (a zoomed frontier's Dice are zoom's, not the whole
    image's)."""
    run = json.loads(Path(path).read_text())
    keep = ("steps", "ensemble", "spacing", "tta", "seconds_per_image", *run["sources"])
    out = {"sources": run["sources"], "limit": run.get("limit")}
    out.update({k: run[k] for k in ("crop", "zoom_outside", "zoom_passes", "zoom_boxes")
                if run.get(k) is not None})
    out["rows"] = [{k: (round(r[k], 4) if isinstance(r[k], float) else r[k])
                    for k in keep if k in r} for r in run["rows"]]
    return json.dumps(out)


def completed(meta: dict[str, str], sets: list[str], drops: list[str],
              sampler_defaults: str | None, measured: str | None,
              frontier: Path | None = None) -> dict[str, str]:
    """`meta` with --drop keys removed and --set / --sampler-defaults / --frontier written."""
    out = {k: v for k, v in meta.items() if k not in drops}
    if frontier:
        out["frontier"] = frontier_rows(frontier)
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set wants KEY=VALUE, got {item!r}")
        out[key] = value
    if sampler_defaults:
        try:
            steps, members, spacing = parse_setting(sampler_defaults, "--sampler-defaults")
        except ValueError as e:
            raise SystemExit(str(e)) from None
        setting = {"steps": steps, "ensemble": members, "spacing": spacing}
        if not measured:
            raise SystemExit("--sampler-defaults needs --measured: what measurement chose it")
        setting["measured"] = measured
        out["sampler_defaults"] = json.dumps(setting)
    return out


def check_loads(data: bytes, meta: dict[str, str]) -> None:
    """Refuse a file that would not load, or whose sampler defaults the model cannot run
    (steps above its T), before anything is written."""
    from dsd_fast import load
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        path.write_bytes(data)
        try:
            pipe = load(str(path))
        except Exception as e:                  # the loader's own message, in one line
            raise SystemExit(f"the written file would not load: {e}") from None
    if "sampler_defaults" in meta:
        steps, t = json.loads(meta["sampler_defaults"])["steps"], pipe.choices().T
        if steps > t:
            raise SystemExit(f"--sampler-defaults: {steps} steps, the model has T = {t}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--half", action="store_true", help="floating tensors as float16")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--drop", action="append", default=[], metavar="KEY")
    ap.add_argument("--sampler-defaults", default=None, metavar="STEPS,MEMBERS,SPACING")
    ap.add_argument("--measured", default=None)
    ap.add_argument("--frontier", type=Path, default=None,
                    help="a bench/steps_frontier.py --out file, kept as metadata 'frontier'")
    args = ap.parse_args(argv)
    if args.out.resolve() == args.source.resolve():
        raise SystemExit("OUT must differ from the source file (the source is never rewritten)")
    meta = completed(read_metadata(args.source), args.set, args.drop,
                     args.sampler_defaults, args.measured, args.frontier)
    tensors = load_file(str(args.source))
    if args.half:
        tensors = {k: (v.half() if v.is_floating_point() else v) for k, v in tensors.items()}
    data = save({k: v.contiguous() for k, v in tensors.items()}, metadata=meta)
    check_loads(data, meta)
    atomic_write(args.out, lambda f: f.write(data))
    size = args.out.stat().st_size
    print(f"{args.out}: {len(tensors)} tensors, {size / 1e6:.1f} MB, "
          f"{'float16' if args.half else 'as trained'}; metadata keys: {sorted(meta)}",
          file=sys.stderr)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
