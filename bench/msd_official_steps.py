"""Dice against sampler and step count for a model of the official MedSegDiff family (#15):
its own DDPM (all T steps, noise at every step) against DDIM (eta 0) and DPM-Solver++(2M)
at a few step counts, on PH2 val and HAM10000 val.

    python bench/msd_official_steps.py --checkpoint RUN/best.safetensors
        [--ph2-limit 20] [--ham-limit 20] [--rows ddpm,ddim:10,ddim:25,ddim:50,dpmpp:10,...]
        [--ensemble 1] [--shard K/N] [--out FILE.json] [--device cuda] [--data DIR]
    python bench/msd_official_steps.py --merge F0.json F1.json

Every row runs segment() on the same images with the same seed (noise keyed by the image's
position, as bench/eval_sources.py) and differs only in sampler and steps. Each image is
scored per row with two ensemble rules (this project's "mean" and the official code's
"mean-squared"), and once more with the anchor network's `cal` map alone (thresholded at
0.5; it depends on the image only, so it is one row whatever the sampler), and by how well
the network denoises the true mask at a few noise levels (denoising_dice). Times are the
row's wall time per image in one process, so rows compare as ratios. The DDPM row costs T
network evaluations per image and ensemble member: --shard K/N splits the images between N
processes (one thread each), --merge joins their files. --device runs it on a GPU;
--data reads the val splits from a copy of ../shared/data (bench/pack_data.py), for a
machine without ../shared (bench/gpu_msd_official.sh).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dsd_fast import load
from dsd_fast.images import load_mask, to_chw
from dsd_fast.metrics import dice
from eval_sources import DATA, val_items


DENOISING_TS = (10, 100, 300, 600, 900, 999)


def parse_rows(text: str) -> list[tuple[str, int | None]]:
    rows = []
    for part in text.split(","):
        sampler, _, steps = part.partition(":")
        rows.append((sampler, int(steps) if steps else None))
    return rows


def cal_mask(cal: torch.Tensor, size_hw: tuple[int, int]) -> np.ndarray:
    """The anchor network's sigmoid map (1, 1, S, S) at the image's size, > 0.5."""
    up = F.interpolate(cal.float(), size=size_hw, mode="bilinear", align_corners=False)
    return (up[0, 0] > 0.5).cpu().numpy()


@torch.no_grad()
def denoising_dice(pipe, image: torch.Tensor, anchor: torch.Tensor, truth: np.ndarray, ts,
                   seed: int) -> dict:
    """Dice of the one-step x0 estimate from the TRUE mask noised to t (at the network's
    size; `image` the network input, `anchor` its anchor features): how well the network
    denoises at each noise level. A network that is right at small t but not near T cannot
    sample a mask from pure noise, whatever the sampler."""
    net, s = pipe.model, image.shape[-1]
    mask = F.interpolate(torch.from_numpy(truth).float()[None, None], size=(s, s),
                         mode="bilinear", align_corners=False) > 0.5
    g = torch.Generator().manual_seed(seed)          # CPU draws: the same on every device
    out = {}
    for t in ts:
        abar = pipe.schedule.alphas_cumprod[t].float()
        noise = torch.randn(mask.shape, generator=g)
        x_t = (abar.sqrt() * mask.float() + (1 - abar).sqrt() * noise).to(image.device)
        eps = net.unet(x_t, image, torch.tensor([t], device=image.device), anchor)[:, :1]
        x0 = ((x_t - (1 - abar).sqrt() * eps) / abar.sqrt()).cpu()
        out[str(t)] = float(dice((x0 > 0.5)[0, 0].numpy(), mask[0, 0].numpy()))
    return out


def summarise(records: list[dict]) -> dict:
    out = {}
    for source in sorted({r["source"] for r in records}) + ["all"]:
        rs = [r for r in records if source in ("all", r["source"])]
        table = {"images": len(rs), "cal": float(np.mean([r["cal"] for r in rs])),
                 "denoising": {t: float(np.mean([r["denoising"][t] for r in rs]))
                               for t in rs[0]["denoising"]}}
        for name in rs[0]["rows"]:
            for rule in ("mean", "mean-squared"):
                d = np.array([r["rows"][name][rule] for r in rs])
                table[f"{name} {rule}"] = float(d.mean())
                table[f"{name} {rule} below_0.5"] = int((d < 0.5).sum())
            table[f"{name} s/image"] = float(np.mean([r["rows"][name]["seconds"]
                                                      for r in rs]))
        out[source] = table
    return out


def table(summary: dict) -> str:
    """Markdown: one line per sampler row, Dice per source under both rules, and cal."""
    sources = [s for s in summary if s != "all"] + ["all"]
    names = [k[:-len(" s/image")] for k in summary["all"] if k.endswith(" s/image")]
    head = " | ".join(f"{s} mean / mean-sq" for s in sources)
    lines = [f"| sampler steps | {head} | s/image |", "|---" * (len(sources) + 2) + "|"]
    for name in names:
        cells = " | ".join(f"{summary[s][name + ' mean']:.3f} / "
                           f"{summary[s][name + ' mean-squared']:.3f}" for s in sources)
        lines.append(f"| {name} | {cells} | {summary['all'][name + ' s/image']:.1f} |")
    cells = " | ".join(f"{summary[s]['cal']:.3f}" for s in sources)
    lines.append(f"| cal (anchor map alone) | {cells} | |")
    lines.append("")
    lines.append("Dice of the one-step x0 estimate from the true mask noised to t (all images): "
                 + ", ".join(f"t = {t}: {d:.3f}" for t, d in summary["all"]["denoising"].items()))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint")
    ap.add_argument("--ph2-limit", type=int, default=20)
    ap.add_argument("--ham-limit", type=int, default=20)
    ap.add_argument("--rows", default="ddpm,ddim:10,ddim:25,ddim:50,dpmpp:10,dpmpp:25,dpmpp:50")
    ap.add_argument("--ensemble", type=int, default=1)
    ap.add_argument("--shard", default="0/1")
    ap.add_argument("--out", default=None)
    ap.add_argument("--merge", nargs="*", default=None, help="JSON files of shards to merge")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data", default=str(DATA), help="folder holding ph2/ and ham10000/")
    args = ap.parse_args()
    if args.merge:
        records = [r for f in args.merge for r in json.loads(Path(f).read_text())["records"]]
        summary = summarise(records)
        print(json.dumps(summary, indent=1))
        print(table(summary))
        return
    pipe = load(args.checkpoint, device=args.device)
    if pipe.family.name != "medsegdiff-official":
        raise SystemExit(f"{args.checkpoint} is a {pipe.family.title} model; this study is "
                         "for the official MedSegDiff family")
    T = pipe.schedule.T
    k, n = (int(v) for v in args.shard.split("/"))
    todo = list(enumerate(val_items(args.ham_limit, args.ph2_limit, args.data)))[k::n]
    ts = [t for t in DENOISING_TS if t < T]
    records = []
    for pos, (source, i, img_path, mask_path) in todo:
        truth = load_mask(mask_path).numpy()
        chw = to_chw(img_path, 0)
        image = pipe.model_input([chw])
        with torch.no_grad():                  # the anchor pass serves cal and the check
            anchor, cal = pipe.model.anchors(image)
        rec = {"source": source, "id": i,
               "cal": float(dice(cal_mask(cal, tuple(chw.shape[1:])), truth)),
               "denoising": denoising_dice(pipe, image, anchor, truth, ts, pos), "rows": {}}
        for sampler, steps in parse_rows(args.rows):
            t0 = time.perf_counter()
            res = pipe.segment([chw], steps=steps or T, ensemble=args.ensemble, seed=0,
                               noise_keys=[pos], sampler=sampler, fusion="mean-squared")[0]
            secs = time.perf_counter() - t0
            # probability is the ensemble mean whatever the fusion: > 0.5 is the "mean" rule
            rec["rows"][f"{sampler} {steps or T}"] = {
                "mean": float(dice(res.probability > 0.5, truth)),
                "mean-squared": float(dice(res.mask, truth)), "seconds": secs}
        records.append(rec)
        print(json.dumps(rec), flush=True)
        if args.out:        # after every image: a long shard keeps what it has done
            Path(args.out).write_text(json.dumps({"checkpoint": args.checkpoint,
                                                  "ensemble": args.ensemble,
                                                  "records": records}))
    print(json.dumps(summarise(records), indent=1))


if __name__ == "__main__":
    main()
