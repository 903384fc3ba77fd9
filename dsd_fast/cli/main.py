"""`dsd-fast` command line: segment images, train a model."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..diffusion import SAMPLERS, SPACINGS
from ..options import (CROPS, POSTPROCESS_CHOICES, REFINES, ZOOM_BOXES, ZOOM_OUTSIDE,
                       ZOOM_PASSES)
from ..precision import PRECISIONS
from ..results import FUSIONS


def cmd_segment(args) -> int:
    # Argument parsing only: the run (inputs, batching, outputs, resume) is run.py's.
    from .errors import UsageError
    from .run import BatchOptions, run
    try:
        opts = BatchOptions(
            output=args.output, checkpoint=args.checkpoint, steps=args.steps,
            ensemble=args.ensemble, seed=args.seed, batch_size=args.batch_size,
            threads=args.threads, recursive=args.recursive, overwrite=args.overwrite,
            allow_inplace=args.allow_inplace, fail_fast=args.fail_fast, gt=args.gt,
            overlay=not args.no_overlay, maps=not args.no_maps, report=not args.no_report,
            max_pixels=args.max_pixels, quiet=args.quiet, clip_x0=not args.no_clip,
            precision=args.precision, spacing=args.spacing, tta=args.tta,
            postprocess=args.postprocess, sampler=args.sampler, fusion=args.fusion,
            refine=args.refine, crop=args.crop, zoom_outside=args.zoom_outside,
            zoom_passes=args.zoom_passes, zoom_boxes=args.zoom_boxes,
            model_settings=_parse_settings(args.model_setting),
            ray=args.ray, workers=args.workers, axis=args.axis)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return run(args.images, opts).exit_code


def _family_options(parser) -> None:
    """--sampler, --fusion, --refine, --crop, --zoom-outside, --zoom-passes: choices from
    options.py (what segment() takes), and in the help what each registered family accepts
    (its Choices)."""
    from ..families import FAMILIES
    accepts = {}
    for fam in FAMILIES.values():
        config = next(iter(fam.configs.values()), None)
        if config is not None:
            accepts[fam.name] = fam.choices(config)

    def per_family(field: str) -> str:
        parts = []
        for name, c in accepts.items():
            values = [v or "none" for v in getattr(c, field)]
            parts.append(f"{name}: {', '.join(values) if values else '(none)'}")
        return "; ".join(parts)
    parser.add_argument("--sampler", choices=SAMPLERS, default=None,
                        help="ddim (default), ddpm (the published T-step sampler; ignores "
                        "--steps) or dpmpp (DPM-Solver++(2M)). Accepted per family: "
                        + per_family("samplers"))
    parser.add_argument("--fusion", choices=FUSIONS, default="mean",
                        help="how the members' masks become one: mean (default; mean > 0), "
                        "staple, or mean-squared (official MedSegDiff). Per family: "
                        + per_family("fusions"))
    parser.add_argument("--refine", choices=REFINES, default=None,
                        help="DenseCRF refinement (needs the [crf] extra): crf (on means of "
                        "member subsets), crf-published (DiffSeg's protocol). Per family: "
                        + per_family("refines"))
    parser.add_argument("--crop", choices=CROPS, default=None,
                        help="where the mask covers the image: full (resized whole image), "
                        "center (DiffSeg's published centre crop; background outside) or zoom "
                        "(a cheap pass finds the object, a second at the run's setting "
                        "segments the box around it); default: the model file's own. Per "
                        "family: " + per_family("crops"))
    parser.add_argument("--zoom-outside", choices=ZOOM_OUTSIDE, default=None,
                        help="with --crop zoom, what the mask and maps hold outside the finest "
                        "pass's box: pass1 (the first pass's; a second object it found is "
                        "kept) or background (for one object per image, e.g. an optic disc); "
                        "default: the model file's own, else pass1")
    parser.add_argument("--zoom-passes", type=int, choices=ZOOM_PASSES, default=None,
                        help="with --crop zoom, 2 (default) or 3: a third pass at the run's "
                        "setting on the box around what the second found (better on fundus "
                        "discs, worse on BUSI lesions; docs/usage.md); default: the model "
                        "file's own, else 2")
    parser.add_argument("--zoom-boxes", type=int, choices=ZOOM_BOXES, default=None,
                        help="with --crop zoom, how many candidate boxes from the first pass "
                        "the second tries (1-4), keeping the one where it is surest of what "
                        "it draws (fundus photos whose first pass drew a bright artefact as "
                        "the disc; docs/usage.md); default: the model file's own, else 1")


def _batch_size(text: str):
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"an integer or 'auto', got {text!r}") from None


def _parse_settings(pairs) -> dict:
    """KEY=VALUE strings -> {KEY: value}, values read as int, float, true/false or text."""
    from .errors import UsageError
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--model-setting takes KEY=VALUE, got {pair!r}")
        for cast in (int, float):
            try:
                out[key] = cast(value)
                break
            except ValueError:
                continue
        else:
            out[key] = {"true": True, "false": False}.get(value.lower(), value)
    return out


def _user_errors(cmd):
    """A data or argument error (bad folder, corrupt file, mismatched masks, a value out of
    range) is the user's: one line on stderr and exit status 2, no traceback."""
    def wrapped(args) -> int:
        try:
            return cmd(args)
        except BrokenPipeError:                 # the reader of stdout left: main's to handle
            raise
        except (ValueError, OSError) as e:      # ImageInputError, CheckpointError included
            print(f"error: {e}", file=sys.stderr)
            return 2
    return wrapped


@_user_errors
def cmd_train(args) -> int:
    from ..train import TrainOptions, Trainer
    from ..train.loop import run_validation
    from ..train.options import OLD_VALIDATION, parse_val_setting
    from ..train.sources import parse_source
    sources = [parse_source(s).to_dict() for s in args.source] if args.source else None
    # Not given: a resumed run keeps its own validation setting (the one that chose its
    # best.safetensors), a new run takes the old default.
    validation = dict(run_validation(args.out) or OLD_VALIDATION)
    if args.val_setting is not None:
        steps, members, spacing = parse_val_setting(args.val_setting)
        validation.update(val_steps=steps, val_ensemble=members, val_spacing=spacing)
    if args.val_crop is not None:
        validation["val_crop"] = args.val_crop
    opts = TrainOptions(image_dir=args.images, mask_dir=args.masks, out_dir=args.out,
                        train_ids=args.train_ids, val_ids=args.val_ids, config=args.config,
                        total_steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                        val_every=args.val_every, seed=args.seed, threads=args.threads,
                        init_from=args.init_from, sources=sources, augmentation=args.augment,
                        lr_schedule=args.lr_schedule, precision=args.precision,
                        device=args.device, roi_crops=args.roi_crops,
                        classes=args.classes.split("+") if args.classes else None,
                        **validation)
    best = Trainer(opts).run(progress=not args.quiet)
    weights = Path(args.out) / "best.safetensors"
    if args.val_ids or any(s.get("val") for s in sources or []):
        print(f"done: best validation Dice {best:.4f}; weights in {weights}")
    else:
        print(f"done: {args.steps} steps, no validation set (--val-ids); the final EMA weights "
              f"are in {weights}")
    return 0


@_user_errors
def cmd_eval(args) -> int:
    import warnings

    from ..images import NonBinaryMaskWarning
    from .evaluate import evaluate_class_folders, evaluate_folders, format_summary, write_csv
    if args.classes:
        return _eval_classes(args, evaluate_class_folders, format_summary, write_csv)
    if args.exclusive_classes:
        raise ValueError("--exclusive-classes goes with --classes A+B")
    from .volume_inputs import eval_volumes, has_volume_predictions
    if has_volume_predictions(args.pred):        # NIfTI masks: volumes, with their spacing
        return eval_volumes(args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NonBinaryMaskWarning)
        rows, summary = evaluate_folders(args.pred, args.gt)
    grey = [str(w.message).split(": not a binary mask")[0] for w in caught
            if issubclass(w.category, NonBinaryMaskWarning)]
    out = Path(args.out) if args.out else Path.cwd()
    path = write_csv(rows, out / "metrics.csv")
    print(format_summary(summary, len(rows)))
    print(f"per-image metrics: {path}")
    if grey:
        print(f"note: {len(grey)} mask file(s) were not binary (grey levels, e.g. JPEG) and "
              f"were binarised at > 128 of 255, as the ISIC scorer does: "
              f"{', '.join(grey[:3])}{' ...' if len(grey) > 3 else ''}", file=sys.stderr)
    return 0


def _eval_classes(args, evaluate_class_folders, format_summary, write_csv) -> int:
    """`dsd-fast eval --classes A+B`: label maps scored class by class (evaluate.py)."""
    from ..classes import check_classes
    names = args.classes.split("+")
    check_classes(names, len(names))
    rows, summary = evaluate_class_folders(args.pred, args.gt, names,
                                           nested=not args.exclusive_classes)
    out = Path(args.out) if args.out else Path.cwd()
    path = write_csv(rows, out / "metrics.csv", names)
    print(f"mean over {len(names)} classes:")
    print(format_summary(summary, len(rows)))
    for name in names:
        print(f"\nclass {name}:")
        print(format_summary(summary["classes"][name], len(rows)))
    print(f"per-image metrics: {path}")
    return 0


@_user_errors
def cmd_export(args) -> int:
    from ..api import load
    from .export import export_onnx
    settings = _parse_settings(args.model_setting)
    model = load(args.checkpoint, **settings) if settings else args.checkpoint
    for path in export_onnx(model, args.onnx, batch=args.batch, dynamic_batch=args.dynamic_batch):
        print(f"wrote {path}")
    return 0


def cmd_doctor(args) -> int:
    from .doctor import run
    return run(timing=not args.no_timing)


def cmd_serve(args) -> int:
    from ..serve.command import run
    return run(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dsd-fast", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser(
        "segment", help="segment images into a folder (masks, maps, overlays, report)",
        description="Segment images into OUTPUT: per image <name>_mask.png (0/255), "
        "<name>_prob.png (16-bit probability), <name>_uncertainty.png (heatmap), "
        "<name>_overlay.png, all at the original size; results.json, results.csv and "
        "index.html for the run. Re-running resumes: finished images are skipped.")
    s.add_argument("images", nargs="+",
                   help="image files (also .npy arrays, NIfTI / DICOM volumes), folders "
                   "(BraTS cases, DICOM series and channel folders <prefix>_c0.png .. are one "
                   "input each) or glob patterns (quote them: 'data/**/*.jpg')")
    s.add_argument("-o", "--output", required=True, help="output folder")
    s.add_argument("--checkpoint", default=None,
                   help="model file (.safetensors, a DermoSegDiff or MedSegDiff .pt/.pth), or "
                   "a bundled model's name (default, medsegdiff); default: bundled default")
    s.add_argument("--model-setting", action="append", metavar="KEY=VALUE",
                   help="what a checkpoint of the original code does not store, e.g. "
                   "objective=pred_x0 or timesteps=500 for a bare MedSegDiff state dict "
                   "(repeatable; the loader names what it needs)")
    s.add_argument("--steps", type=int, default=None,
                   help="DDIM steps. Without --steps, --ensemble and --spacing the model's own "
                   "sampler runs (the bundled default: 25 members x 5 trailing steps); else "
                   "25 steps, 5 members, leading for those not given")
    s.add_argument("--ensemble", type=int, default=None, help="chains per image (see --steps)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-clip", action="store_true",
                   help="textbook DDIM: do not clamp each step's clean-mask estimate to [-1, 1]")
    _family_options(s)
    s.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="bf16: the network in bfloat16, ~2x faster on large networks where "
                   "the CPU has AVX-512 BF16 or AMX (falls back to fp32 with a warning "
                   "elsewhere); masks agree with fp32's to Dice >= 0.99 (default fp32)")
    s.add_argument("--spacing", choices=SPACINGS, default=None,
                   help="DDIM's time grid: leading (evenly spaced, ending at t = 0) or trailing "
                   "(starting at t = T-1; at few steps better for some weights: MODEL_CARD.md); "
                   "see --steps for the default")
    s.add_argument("--tta", action="store_true",
                   help="test-time augmentation: each ensemble member sees the image "
                   "flipped/rotated, its mask turned back before fusing (same compute)")
    s.add_argument("--postprocess", choices=POSTPROCESS_CHOICES,
                   default="auto",
                   help="clean the mask: fill holes, keep the largest component, or both; "
                   "auto (default): the model file's own setting (the bundled default: "
                   "largest), none: the published mask")
    s.add_argument("-r", "--recursive", action="store_true",
                   help="also take images from subfolders; outputs mirror the subfolders")
    s.add_argument("--batch-size", type=_batch_size, default=None,
                   help="images per network batch (each brings --ensemble chains); default 1, "
                   "which keeps every image's maps independent of the rest of the run; "
                   "'auto': as many as fit in 40%% of the available memory, at most 8 "
                   "(faster on GPUs)")
    s.add_argument("--threads", type=int, default=None,
                   help="CPU threads for the network (with --ray: per worker, default 1)")
    s.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="segment on a Ray cluster: alone, start or join a Ray instance on "
                   "this machine; with an address, join that cluster (auto, ray://host:10001)."
                   " Inputs, model and -o must be on a file system every node sees. Needs "
                   "pip install 'dsd_fast[ray]'")
    s.add_argument("--workers", type=int, default=None,
                   help="with --ray: Ray tasks running at once (default: the cluster's CPUs / "
                   "--threads)")
    s.add_argument("--overwrite", action="store_true",
                   help="redo images whose outputs already exist (default: skip them), and "
                   "replace files at the output names that dsd-fast did not write (a "
                   "<name>_mask.png of your own beside <name>.png, a results.csv); without "
                   "it such files are never touched")
    s.add_argument("--allow-inplace", action="store_true",
                   help="allow the output folder to be inside an input folder")
    fail = s.add_mutually_exclusive_group()
    fail.add_argument("--keep-going", dest="fail_fast", action="store_false",
                      help="skip unreadable images and go on (default)")
    fail.add_argument("--fail-fast", dest="fail_fast", action="store_true",
                      help="stop at the first image that fails")
    s.set_defaults(fail_fast=False)
    s.add_argument("--gt", default=None,
                   help="folder of ground-truth masks (matched by stem, or by relative path "
                   "with --recursive): score as it goes")
    s.add_argument("--no-overlay", action="store_true", help="no <name>_overlay.png")
    s.add_argument("--no-maps", action="store_true",
                   help="no <name>_prob.png and <name>_uncertainty.png")
    s.add_argument("--no-report", action="store_true", help="no index.html")
    s.add_argument("--max-pixels", type=int, default=16_000_000,
                   help="images with more pixels are decoded at reduced size for the model "
                   "(outputs stay at the original size; default 16000000)")
    s.add_argument("--axis", type=int, choices=(0, 1, 2), default=None,
                   help="volumes: the voxel axis they are sliced along (default 2, the last, "
                   "as the official BraTS loader slices)")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_segment)

    x = sub.add_parser("export", help="write a model's denoiser as ONNX (ONNX Runtime, "
                       "OpenVINO, TensorRT)")
    x.add_argument("--onnx", required=True, metavar="OUT.onnx", help="file to write")
    x.add_argument("--checkpoint", default=None,
                   help="model file or bundled name; default: the bundled default")
    x.add_argument("--model-setting", action="append", metavar="KEY=VALUE",
                   help="what a checkpoint of the original code does not store")
    x.add_argument("--batch", type=int, default=5, help="batch of the example input (default 5)")
    x.add_argument("--dynamic-batch", action="store_true", help="leave the batch axis free")
    x.set_defaults(func=cmd_export)

    d = sub.add_parser("doctor", help="versions, CPU/GPU, which kernels run and whether they "
                       "agree with their twins, one timed step: paste it into bug reports")
    d.add_argument("--no-timing", action="store_true", help="skip the timed denoiser steps")
    d.set_defaults(func=cmd_doctor)

    from ..serve.command import DESCRIPTION as SERVE_DESCRIPTION
    from ..serve.command import add_arguments as add_serve_arguments
    v = sub.add_parser("serve", help="an HTTP service and web page: POST an image, get "
                       "the mask and maps (batched, with limits, metrics, Ray Serve)",
                       description=SERVE_DESCRIPTION)
    add_serve_arguments(v)
    v.set_defaults(func=cmd_serve)

    e = sub.add_parser("eval", help="score predicted masks against ground truth")
    e.add_argument("--pred", required=True, help="folder of predicted masks (<stem>[_mask].png)")
    e.add_argument("--gt", required=True, help="folder of ground-truth masks (<stem>.png)")
    e.add_argument("--out", default=None, help="folder for metrics.csv (default: current)")
    e.add_argument("--classes", default=None, metavar="A+B",
                   help="several classes: predictions are label maps (<stem>_labels.png, "
                   "0 background, k = the k-th class), ground truth label maps <stem>.png "
                   "or one mask per class <stem>_A.png, <stem>_B.png (> 127); metrics per "
                   "class and their mean")
    e.add_argument("--exclusive-classes", action="store_true",
                   help="with --classes: the classes do not overlap (default: nested, each "
                   "inside the one before, as optic disc and cup)")
    e.set_defaults(func=cmd_eval)

    t = sub.add_parser("train", help="train a model (resumes from OUT/last.pt if present)")
    t.add_argument("--images", help="folder of images (or use --source)")
    t.add_argument("--masks", help="folder of masks (matched by file stem)")
    t.add_argument("--source", action="append", metavar="SPEC",
                   help="a dataset, repeatable: name=N,images=DIR,masks=DIR[,train=IDS]"
                   "[,val=IDS][,weight=W][,val_limit=K][,classes=A+B]; W is its share of "
                   "training images, selection is on the mean of the sources' val Dice; "
                   "classes: one mask per class, <stem>_A.png, <stem>_B.png")
    t.add_argument("--classes", default=None, metavar="A+B",
                   help="a model of several classes (a config such as default_2class): "
                   "their names in mask-channel order, each read from <stem>_<class>.png in "
                   "--masks (soft maps binarised at > 127); saved in the model file")
    t.add_argument("--augment", choices=("basic", "strong"), default="basic",
                   help="basic: flips, rotation, small colour jitter (the PH2 model's); "
                   "strong: also zoom/shift/aspect, illumination, vignette, hair")
    t.add_argument("--roi-crops", type=float, default=0.0, metavar="P",
                   help="the share (0..1) of training pairs first cropped to the square "
                   "around their mask with a random 15-45%% margin, so the model also learns "
                   "the zoomed views of segment --crop zoom (default 0: none)")
    t.add_argument("--train-ids", help="file with one training stem per line (default: all)")
    t.add_argument("--val-ids", help="file with one validation stem per line")
    t.add_argument("--out", required=True, help="run folder (checkpoints, log, best weights)")
    t.add_argument("--config", default="default", help="named model config")
    t.add_argument("--steps", type=int, default=20000)
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant",
                   help="cosine: anneal --lr to 0 over this run's steps (from a warm start's "
                   "step to --steps)")
    t.add_argument("--val-every", type=int, default=500)
    t.add_argument("--val-setting", default=None, metavar="STEPS,MEMBERS,SPACING",
                   help="validation's sampling, which chooses best.safetensors: DDIM steps, "
                   "ensemble members, leading|trailing grid, e.g. 5,25,trailing (the setting "
                   "the model ships with); default: a resumed run's own, else 10,3,leading")
    t.add_argument("--val-crop", choices=("full", "zoom"), default=None,
                   help="zoom: validate with segment --crop zoom's passes (for a "
                   "--roi-crops model; val images held at 4x the model size, Dice at that "
                   "size); default: a resumed run's own, else full")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: forward passes under bfloat16 autocast (float32 weights, "
                   "losses and optimizer; ~2x faster on CPUs with AVX-512 BF16 or AMX)")
    t.add_argument("--device", default="cpu",
                   help="cpu (default), cuda or cuda:N: where the networks and optimizer live "
                   "(random draws stay on the CPU, so runs repeat across devices)")
    t.add_argument("--init-from", default=None,
                   help="warm start a new run from this .safetensors model (same config): "
                   "its weights become the online and EMA weights, the optimizer starts fresh; "
                   "ignored when OUT/last.pt exists (the run resumes instead)")
    t.add_argument("-q", "--quiet", action="store_true")
    t.set_defaults(func=cmd_train)
    return p


def main(argv=None) -> int:
    """Run one `dsd-fast` command; returns its exit status. On a terminal: warnings print as
    one `warning:` line, --threads above the available cores is capped (said in one line),
    Ctrl-C outside a segment run (which handles its own) prints `interrupted` and returns
    130, and a reader that stops reading (`| head`) ends the command quietly with 141."""
    from . import console
    try:
        with console.plain_warnings():
            args = build_parser().parse_args(argv)
            if getattr(args, "threads", None) and not getattr(args, "ray", None):
                # with --ray the threads are per worker, on machines this one cannot see
                args.threads = console.cap_threads(args.threads)
            code = args.func(args)
            sys.stdout.flush()                  # a broken pipe shows here, not at exit
            return code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return console.EXIT_INTERRUPTED
    except BrokenPipeError:
        console.silence_broken_pipe()
        return console.EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
