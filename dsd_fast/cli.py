"""`dsd-fast` command line: segment images, train a model."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .data import IMAGE_SUFFIXES


def _expand_inputs(inputs: list[str]) -> list[Path]:
    paths = []
    for s in inputs:
        p = Path(s)
        if p.is_dir():
            paths.extend(sorted(q for q in p.iterdir()
                                if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES))
        else:
            paths.append(p)
    return paths


def _is_inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def _write_png_atomically(arr, target: Path) -> None:
    from PIL import Image
    tmp = target.with_name(f".{target.name}.tmp")
    Image.fromarray(arr).save(tmp, format="PNG")
    os.replace(tmp, target)


def _score_against_gt(mask, path: Path, gt_masks: dict, failed: list):
    from .data import load_mask
    from .evaluate import score_pair
    if path.stem not in gt_masks:
        failed.append((path, f"{path}: no ground-truth mask with stem {path.stem!r}"))
        return None
    try:
        return score_pair(mask, load_mask(gt_masks[path.stem]).numpy(), path.stem)
    except ValueError as e:
        failed.append((path, str(e)))
        return None


def cmd_segment(args) -> int:
    import numpy as np
    from tqdm.auto import tqdm

    from .images import ImageInputError, to_chw
    from .segmentation import resolve_model, segment
    from .visualise import overlay

    inputs = _expand_inputs(args.images)
    if not inputs:
        print("error: no input images found", file=sys.stderr)
        return 2
    out = Path(args.output)
    input_dirs = {p.resolve().parent for p in inputs}
    if not args.allow_inplace and any(_is_inside(out, d) for d in input_dirs):
        print(f"error: output folder {out} is inside an input folder; choose another -o, "
              "or pass --allow-inplace", file=sys.stderr)
        return 2
    gt_masks = None
    if args.gt:
        from .data import list_images
        gt_masks = list_images(Path(args.gt))
    model = resolve_model(args.checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    failed, scores = [], []
    for path in tqdm(inputs, unit="img", desc="segment", disable=args.quiet):
        try:
            chw = to_chw(path)
            res = segment(chw, steps=args.steps, ensemble=args.ensemble, model=model,
                          seed=args.seed)[0]
        except ImageInputError as e:
            failed.append((path, str(e)))
            continue
        outputs = {f"{path.stem}_mask.png": (res.mask * 255).astype(np.uint8)}
        if not args.no_overlay:
            outputs[f"{path.stem}_overlay.png"] = overlay(chw.numpy(), res.mask, res.std)
        for name, arr in outputs.items():
            target = out / name
            if target.resolve() == path.resolve():
                failed.append((path, f"output {target} would overwrite the input"))
                continue
            _write_png_atomically(arr, target)
        if gt_masks is not None:
            scores.append(_score_against_gt(res.mask, path, gt_masks, failed))
    scores = [r for r in scores if r is not None]
    if scores:
        from .evaluate import format_summary, write_csv
        from .metrics import summarise
        print(format_summary(summarise(scores), len(scores)))
        print(f"per-image metrics: {write_csv(scores, out / 'metrics.csv')}")
    for path, why in failed:
        print(f"failed: {why}", file=sys.stderr)
    print(f"{len(inputs) - len(failed)} of {len(inputs)} images segmented into {out}")
    return 1 if failed else 0


def cmd_train(args) -> int:
    from .train import TrainOptions, Trainer
    opts = TrainOptions(image_dir=args.images, mask_dir=args.masks, out_dir=args.out,
                        train_ids=args.train_ids, val_ids=args.val_ids, config=args.config,
                        total_steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                        val_every=args.val_every, seed=args.seed, threads=args.threads)
    best = Trainer(opts).run(progress=not args.quiet)
    print(f"done: best validation Dice {best:.4f}; weights in {Path(args.out) / 'best.safetensors'}")
    return 0


def cmd_eval(args) -> int:
    from .evaluate import evaluate_folders, format_summary, write_csv
    rows, summary = evaluate_folders(args.pred, args.gt)
    out = Path(args.out) if args.out else Path.cwd()
    path = write_csv(rows, out / "metrics.csv")
    print(format_summary(summary, len(rows)))
    print(f"per-image metrics: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dsd-fast", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("segment", help="segment images; writes <stem>_mask.png per input")
    s.add_argument("images", nargs="+", help="image files or folders")
    s.add_argument("-o", "--output", required=True, help="output folder")
    s.add_argument("--checkpoint", default=None,
                   help="model file (.safetensors, or published .pt/.pth); default: bundled")
    s.add_argument("--steps", type=int, default=25, help="DDIM steps (default 25)")
    s.add_argument("--ensemble", type=int, default=5, help="chains per image (default 5)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--allow-inplace", action="store_true",
                   help="allow the output folder to be inside an input folder")
    s.add_argument("--gt", default=None,
                   help="folder of ground-truth masks (matched by stem): score as it goes")
    s.add_argument("--no-overlay", action="store_true",
                   help="write only masks, no <stem>_overlay.png (contour + uncertain band)")
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=cmd_segment)

    e = sub.add_parser("eval", help="score predicted masks against ground truth")
    e.add_argument("--pred", required=True, help="folder of predicted masks (<stem>[_mask].png)")
    e.add_argument("--gt", required=True, help="folder of ground-truth masks (<stem>.png)")
    e.add_argument("--out", default=None, help="folder for metrics.csv (default: current)")
    e.set_defaults(func=cmd_eval)

    t = sub.add_parser("train", help="train a model (resumes from OUT/last.pt if present)")
    t.add_argument("--images", required=True, help="folder of images")
    t.add_argument("--masks", required=True, help="folder of masks (matched by file stem)")
    t.add_argument("--train-ids", help="file with one training stem per line (default: all)")
    t.add_argument("--val-ids", help="file with one validation stem per line")
    t.add_argument("--out", required=True, help="run folder (checkpoints, log, best weights)")
    t.add_argument("--config", default="default", help="named model config")
    t.add_argument("--steps", type=int, default=20000)
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--val-every", type=int, default=500)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("-q", "--quiet", action="store_true")
    t.set_defaults(func=cmd_train)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
