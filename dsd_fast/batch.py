"""`dsd-fast segment`: segment many image files into an output folder, safely.

Inputs are files, folders (with `recursive`, their subfolders too) and glob patterns. Each
input gets a key, its path relative to the folder (or the glob's fixed leading part) it was
found under, without the suffix: `in/sub/a.png` found under `in` is `sub/a`. Outputs mirror
the key, so two `a.png` in different subfolders cannot overwrite each other:

    OUT/<key>_mask.png          0/255, at the original size (written last of the pictures)
    OUT/<key>_prob.png          foreground probability, 16-bit (0..65535 for 0..1)
    OUT/<key>_uncertainty.png   ensemble-std heatmap (visualise.heatmap)
    OUT/<key>_overlay.png       lesion contour on the image, uncertain band shaded
    OUT/results.json, results.csv, metrics.csv (with ground truth), index.html (report.py)
    OUT/.dsd-fast/done/<key>.json   the per-image record; written after all of the image's
                                    outputs, it is what makes an image "finished"

Crash safety. Every file is written to a temporary file in the same folder and renamed over
the target, so a target is either absent or complete. An image is finished only when its
record exists, the record's outputs all exist and the input file's size and mtime are the
ones recorded; a re-run skips finished images (unless `overwrite`) and redoes the rest. A
lock file keeps two runs out of one folder, which also makes it safe to delete temporary
files left by a killed run. Ctrl-C and SIGTERM stop the run between two Python operations:
temporary files are removed and results.json / index.html are written for what finished.

Memory. The network sees every image at its model size (S x S, S = 128 for the published
models), so one batch of images costs the same however large the images are. Each image is
decoded once for the model input (above `max_pixels` from a reduced decode: JPEG draft or
PIL reduce) and once more when its outputs are written, one image at a time; the maps at
the original size are built in strips (about 20 bytes per pixel at the peak, ~1.3 GB for a
64-megapixel image).

Masks are those of `segment()`: for an image up to `max_pixels` the model input, the
probability map and the mask are bit-identical to `segment(path, noise_keys=[key])`'s, key
being the image's output name (e.g. "sub/a"): the initial noise is keyed by that name, so
batch composition and resuming do not change an image's result.
"""
from __future__ import annotations

import contextlib
import csv
import glob as globlib
import io
import json
import math
import os
import re
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Sequence

import numpy as np

from .data import IMAGE_SUFFIXES
from .images import ImageInputError

OUTPUT_SUFFIXES = {"mask": "_mask.png", "probability": "_prob.png",
                   "uncertainty": "_uncertainty.png", "overlay": "_overlay.png"}
STATE_DIR = ".dsd-fast"
TMP_SUFFIX = ".dsd.tmp"
UNCERTAIN_ABOVE = 0.2          # std above which a pixel is in the shaded "uncertain band"
DEFAULT_MAX_PIXELS = 16_000_000
AUTO_BATCH_MAX = 8             # more images per batch barely speeds a CPU up, and a Ctrl-C
                               # loses at most one batch of work
BYTES_PER_OUTPUT_PIXEL = 24    # peak bytes per pixel while an image's outputs are written
SUMMARY_EVERY_S = 120.0        # rewrite results.json / index.html this often during a run
_OUTPUT_NAME = re.compile(r".*(_mask|_prob|_uncertainty|_overlay)\.png$", re.IGNORECASE)
_GLOB_CHARS = re.compile(r"[*?[]")


class UsageError(Exception):
    """The run cannot start (bad arguments, output folder in an input folder, ...): exit 2."""


class OutputError(Exception):
    """Writing into the output folder failed (disk full, permissions): the run stops."""


class Interrupted(KeyboardInterrupt):
    """SIGINT / SIGTERM arrived."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# --------------------------------------------------------------------------- options

@dataclass
class BatchOptions:
    output: Path
    checkpoint: str | None = None
    steps: int = 25
    ensemble: int = 5
    seed: int = 0
    batch_size: int | None = None          # images per network batch; None: from memory
    threads: int | None = None             # torch intra-op threads; None: torch's default
    recursive: bool = False
    overwrite: bool = False
    allow_inplace: bool = False
    fail_fast: bool = False
    gt: str | None = None
    overlay: bool = True
    maps: bool = True                      # probability PNG + uncertainty heatmap
    report: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS   # above this, the model input is a reduced decode
    quiet: bool = False
    clip_x0: bool = True                   # DDIM x0 clipping, as segment()'s default

    def __post_init__(self):
        self.output = Path(self.output)
        for name, lo in (("steps", 1), ("ensemble", 1), ("max_pixels", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise UsageError(f"--{name.replace('_', '-')} must be an integer >= {lo}, "
                                 f"got {v!r}")
        for name in ("batch_size", "threads"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise UsageError(f"--{name.replace('_', '-')} must be an integer >= 1, "
                                 f"got {v!r}")

    def kinds(self) -> list[str]:
        """Output kinds every finished image must have, the mask last (written last)."""
        return ((["probability", "uncertainty"] if self.maps else [])
                + (["overlay"] if self.overlay else []) + ["mask"])


# --------------------------------------------------------------------------- inputs

@dataclass
class InputImage:
    path: Path
    key: str            # output name without suffix, posix, relative: "sub/a"
    rel_dir: str        # folder of the input relative to where it was found ("" at the top)

    @property
    def stem(self) -> str:
        return self.path.stem


@dataclass
class Discovery:
    images: list[InputImage]
    missing: list[tuple[str, str]]          # (argument, why nothing came of it)
    input_dirs: list[Path]                  # resolved folders that hold or gave inputs


def _is_inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def _glob_base(pattern: str) -> Path:
    """The fixed leading folders of a glob pattern: `data/*/x*.png` -> `data`."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts[:-1]:
        if _GLOB_CHARS.search(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def discover(specs: Sequence[str], recursive: bool = False,
             exclude: Path | None = None) -> Discovery:
    """Expand files, folders and globs into InputImages with unique keys.

    Folders list image files (IMAGE_SUFFIXES, hidden files skipped), recursively with
    `recursive`; a file named explicitly is always tried, whatever its suffix. `exclude`
    (the output folder) is never walked into, and in it files named like this command's
    outputs are not inputs (so `--allow-inplace` re-runs do not segment their own masks).
    """
    found: list[tuple[Path, Path | None]] = []      # (file, folder its key is relative to)
    missing: list[tuple[str, str]] = []
    dirs: list[Path] = []
    excl = exclude.resolve() if exclude is not None else None

    def listable(p: Path) -> bool:
        if p.name.startswith(".") or p.suffix.lower() not in IMAGE_SUFFIXES:
            return False
        if excl is not None and _OUTPUT_NAME.match(p.name) and _is_inside(p, excl):
            return False
        return p.is_file()

    def walk(folder: Path, base: Path, deep: bool) -> None:
        dirs.append(folder.resolve())
        if not deep:
            found.extend((p, base) for p in sorted(folder.iterdir()) if listable(p))
            return
        for root, subdirs, files in os.walk(folder):
            root_p = Path(root)
            subdirs[:] = sorted(d for d in subdirs if not d.startswith(".")
                                and not (excl is not None and (root_p / d).resolve() == excl))
            found.extend((root_p / f, base) for f in sorted(files) if listable(root_p / f))

    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            walk(p, p, recursive)
        elif p.is_file():
            found.append((p, None))
            dirs.append(p.resolve().parent)
        elif _GLOB_CHARS.search(spec):
            matches = sorted(globlib.glob(spec, recursive=True))
            base = _glob_base(spec)
            n_before = len(found)
            for m in map(Path, matches):
                if m.is_dir():
                    walk(m, base, recursive)
                elif listable(m):
                    found.append((m, base))
                    dirs.append(m.resolve().parent)
            if len(found) == n_before:
                missing.append((spec, "no image files match this pattern"))
            else:
                dirs.append(base.resolve())
        else:
            missing.append((spec, "no such file or folder"))

    images, seen = [], set()
    for path, base in found:
        real = path.resolve()
        if real in seen:                      # the same file named twice
            continue
        seen.add(real)
        rel = PurePosixPath(path.name) if base is None else \
            PurePosixPath(*path.relative_to(base).parts)
        if ".." in rel.parts:                 # a glob like a/*/../b.png: keep outputs in OUT
            rel = PurePosixPath(path.name)
        rel_dir = "" if str(rel.parent) == "." else str(rel.parent)
        images.append(InputImage(path, str(rel.with_suffix("")), rel_dir))
    _make_keys_unique(images)
    return Discovery(images, missing, sorted(set(dirs)))


def _make_keys_unique(images: list[InputImage]) -> None:
    """Keys that differ only in case or collide (`a.png` + `a.jpg` in one folder; `x/a.png`
    and `y/a.png` named as files) get the input's suffix appended (`a_png`, `a_jpg`), and if
    still equal a counter (`a_png_2`), in input order, so outputs never overwrite each other
    (also on case-insensitive file systems) and the naming is the same on every re-run."""
    groups: dict[str, list[InputImage]] = {}
    for im in images:
        groups.setdefault(im.key.casefold(), []).append(im)
    taken = {k for k, g in groups.items() if len(g) == 1}
    for group in groups.values():
        if len(group) == 1:
            continue
        for im in group:
            ext = im.path.suffix.lstrip(".").lower() or "noext"
            key, n = f"{im.key}_{ext}", 1
            while key.casefold() in taken:
                n += 1
                key = f"{im.key}_{ext}_{n}"
            taken.add(key.casefold())
            im.key = key


def output_paths(out: Path, key: str, kinds: Sequence[str]) -> dict[str, Path]:
    return {k: out / f"{key}{OUTPUT_SUFFIXES[k]}" for k in kinds}


def record_path(out: Path, key: str) -> Path:
    return out / STATE_DIR / "done" / f"{key}.json"


# --------------------------------------------------------------------------- atomic files

def atomic_write(target: Path, write: Callable) -> Path:
    """Write `target` through `write(binary_file)` into a temporary file beside it, flushed
    to disk, then renamed over `target`: readers (and a crash at any point) see either the
    old file or the complete new one, never a part. OSErrors become OutputError."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                                   suffix=TMP_SUFFIX)
    except OSError as e:
        raise OutputError(f"cannot write {target}: {e}") from e
    try:
        os.chmod(tmp, 0o666 & ~_umask())     # mkstemp makes 0600; outputs get the usual mode
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as e:            # also KeyboardInterrupt: never leave the temp file
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise OutputError(f"cannot write {target}: {e}") from e
        raise
    return target


_UMASK = None


def _umask() -> int:
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0o022)    # reading the umask means setting it: set it back at once
        os.umask(_UMASK)
    return _UMASK


def write_png(target: Path, arr: np.ndarray, compress_level: int = 1) -> Path:
    """uint8 (H, W) / (H, W, 3) or uint16 (H, W) (16-bit PNG) array -> PNG, atomically.
    Level 1 zlib: ~5x faster than PIL's default 6 for ~15% larger photos."""
    from PIL import Image
    im = Image.fromarray(arr)
    return atomic_write(target, lambda f: im.save(f, format="PNG",
                                                  compress_level=compress_level))


def write_text(target: Path, text: str) -> Path:
    return atomic_write(target, lambda f: f.write(text.encode("utf-8")))


def remove_stale_temp_files(out: Path) -> int:
    """Delete temporary files a killed run left in `out` (only names this module makes)."""
    n = 0
    for root, _, files in os.walk(out):
        for f in files:
            if f.startswith(".") and f.endswith(TMP_SUFFIX):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(root, f))
                    n += 1
    return n


class OutputLock:
    """An exclusive lock on OUT/.dsd-fast/lock for the run (released by the OS if the
    process dies). Where fcntl is missing (Windows) it does nothing."""

    def __init__(self, out: Path):
        self.path = out / STATE_DIR / "lock"
        self.fd = None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            self.fd = None
            raise UsageError(f"another dsd-fast segment run is writing into {self.path.parents[1]}"
                             " (wait for it, or choose another -o)") from None
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


# --------------------------------------------------------------------------- memory

def available_memory() -> int | None:
    """Bytes this process can still allocate: MemAvailable, capped by a cgroup limit."""
    avail = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    with contextlib.suppress(OSError, ValueError):
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            room = int(limit) - used
            avail = room if avail is None else min(avail, room)
    if avail is None:
        with contextlib.suppress(ValueError, OSError, AttributeError):
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return avail


def chain_bytes(config) -> int:
    """Rough peak activation memory of one chain (one noisy mask) in a forward pass: the
    feature maps of both streams at every level, ~12 float32 copies alive at once (skip
    connections kept for the decoder, residual and norm temporaries). Deliberately high."""
    s = config.image_size
    per = sum((cx + cg) * max(1, s >> lvl) ** 2
              for lvl, (cx, cg) in enumerate(zip(config.dims_x, config.dims_g)))
    return 4 * 12 * per


def auto_batch_size(model, ensemble: int, budget: int | None = None) -> int:
    """Images per network batch: as many as fit (each brings `ensemble` chains) into 40% of
    the available memory (GPU memory for a CUDA model), at most AUTO_BATCH_MAX."""
    import torch
    device = next(model.parameters()).device
    if budget is None:
        if device.type == "cuda":
            budget = int(torch.cuda.mem_get_info(device)[0] * 0.6)
        else:
            avail = available_memory()
            budget = int(0.4 * avail) if avail else 2 << 30
    per_image = max(1, chain_bytes(model.config) * ensemble)
    return int(max(1, min(AUTO_BATCH_MAX, budget // per_image)))


# --------------------------------------------------------------------------- decoding

@contextlib.contextmanager
def open_image(path: Path):
    """PIL image of `path` (not yet decoded); decoding errors are ImageInputError naming it."""
    from PIL import Image, UnidentifiedImageError
    if not path.exists():
        raise ImageInputError(f"{path}: no such file")
    if path.is_dir():
        raise ImageInputError(f"{path}: is a folder, expected an image file")
    try:
        im = Image.open(path)
    except Image.DecompressionBombError as e:
        raise ImageInputError(f"{path}: too large to decode safely ({e})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageInputError(f"{path}: unreadable or corrupt image ({e})") from None
    try:
        yield im
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        if isinstance(e, ImageInputError):
            raise
        raise ImageInputError(f"{path}: unreadable or corrupt image ({e})") from None
    finally:
        im.close()


def _check_memory(path: Path, h: int, w: int) -> None:
    need = BYTES_PER_OUTPUT_PIXEL * h * w
    avail = available_memory()
    if avail is not None and need > 0.9 * avail:
        raise ImageInputError(
            f"{path}: {w} x {h} pixels needs about {need / 2**30:.1f} GiB to write its "
            f"outputs, only {avail / 2**30:.1f} GiB is available")


def reduced_pixels(size: int, max_pixels: int) -> int:
    """Pixels of the reduced decode of a large image: (16 S)^2 for model size S (4.2 MP at
    S = 128) is ample for the antialiased resize to S x S, and at most max_pixels."""
    return max(1, min(max_pixels, (16 * size) ** 2))


def _reduced(im, max_pixels: int):
    """A decoded copy of `im` with at most ~max_pixels pixels, never decoding more than
    needed: JPEG draft decodes at 1/2, 1/4 or 1/8 scale directly; other formats are decoded
    and box-averaged by an integer factor (Image.reduce)."""
    w, h = im.size
    k = math.sqrt(w * h / max_pixels)
    im.draft(im.mode, (max(1, math.ceil(w / k)), max(1, math.ceil(h / k))))  # JPEG only
    im.load()
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        im = im.convert("I")                   # reduce() has no 16-bit mode; values kept
    elif im.mode not in ("L", "LA", "RGB", "RGBA", "I", "F"):
        im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
    factor = math.ceil(math.sqrt(im.size[0] * im.size[1] / max_pixels))
    return im.reduce(factor) if factor > 1 else im


@dataclass
class Prepared:
    item: InputImage
    model_chw: object                 # (3, S, S) float tensor: exactly the network's input
    height: int
    width: int
    downscaled: tuple[int, int] | None   # (h, w) the model input was made from, if reduced
    fingerprint: dict


def _fingerprint(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def prepare(item: InputImage, size: int, max_pixels: int) -> Prepared:
    """Decode one image into its S x S model input (resized and min-max normalised exactly
    as `segment()` does; normalising again inside `segment()` changes nothing)."""
    from .images import array_to_chw, pil_to_array, to_model_input
    path = item.path
    fp = _fingerprint(path) if path.exists() else {}
    with open_image(path) as im:
        w, h = im.size
        _check_memory(path, h, w)
        if w * h <= max_pixels:
            im.load()
            arr, downscaled = pil_to_array(im), None
        else:
            small = _reduced(im, reduced_pixels(size, max_pixels))
            arr, downscaled = pil_to_array(small), (small.size[1], small.size[0])
    chw = array_to_chw(arr, str(path))
    del arr
    return Prepared(item, to_model_input([chw], size)[0], h, w, downscaled, fp)


def decode_rgb8(path: Path, height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8 picture of the image, the pixels `overlay()` would draw on (16-bit
    and float images scaled as the model input is, converted strip by strip)."""
    from .images import pil_to_array
    from .visualise import strip_rows
    with open_image(path) as im:
        if im.size != (width, height):
            raise ImageInputError(f"{path}: changed while it was being segmented")
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
            arr = pil_to_array(im)                       # float32 in [0, 1]
            if im.mode == "F" and (not np.isfinite(arr).all() or arr.min() < 0
                                   or arr.max() > 1):
                raise ImageInputError(f"{path}: float image values outside [0, 1]")
            out = np.empty((height, width, 3), np.uint8)
            for r0, r1 in strip_rows(height, width):
                out[r0:r1] = (np.clip(arr[r0:r1], 0, 1) * 255 + 0.5).astype(np.uint8)[..., None]
            return out
        if im.mode != "RGB":
            im = im.convert("RGB")
        return np.array(im)


# --------------------------------------------------------------------------- ground truth

class GroundTruth:
    """Ground-truth masks in a folder, found for an input at GT/<rel_dir>/<stem>.* (mirrored
    layout) or else GT/<stem>.* (flat, as `dsd-fast eval` expects)."""

    def __init__(self, folder):
        from .data import list_images
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise UsageError(f"--gt {folder}: no such folder")
        try:
            self.flat = list_images(self.folder)
        except ValueError as e:
            raise UsageError(f"--gt: {e}") from None

    def find(self, item: InputImage) -> Path | None:
        if item.rel_dir:
            sub = self.folder / item.rel_dir
            for suffix in sorted(IMAGE_SUFFIXES):
                for cand in (sub / f"{item.stem}{suffix}", sub / f"{item.stem}{suffix.upper()}"):
                    if cand.is_file():
                        return cand
        return self.flat.get(item.stem)

    def score(self, item: InputImage, mask: np.ndarray) -> dict:
        """score_image metrics of `mask` against the item's ground truth; ValueError names
        the image when there is none or the sizes differ."""
        from .data import load_mask
        from .evaluate import score_pair
        path = self.find(item)
        if path is None:
            raise ValueError(f"{item.path}: no ground-truth mask with stem {item.stem!r} "
                             f"in {self.folder}")
        try:
            gt = load_mask(path).numpy()
        except ImageInputError as e:
            raise ValueError(f"{item.path}: ground truth {e}") from None
        row = score_pair(mask, gt, item.key)
        return {k: v for k, v in row.items() if k != "image"}


# --------------------------------------------------------------------------- one image

def _maps_at(res, h: int, w: int, antialias: bool = False):
    """The model-size probability and std of a result, bilinearly resized to (h, w) exactly
    as segment() resizes them (stacked, one interpolate): float32 arrays."""
    import torch
    import torch.nn.functional as F
    maps = torch.stack((torch.from_numpy(res.probability), torch.from_numpy(res.std)))[None]
    up = F.interpolate(maps, size=(h, w), mode="bilinear", align_corners=False,
                       antialias=antialias)[0]
    return up[0].clamp_(0, 1).numpy(), up[1].clamp_min_(0).numpy()


def _thumbnail(rgb: np.ndarray | None, res, h: int, w: int) -> tuple[str, list[int]]:
    """The report's thumbnail: the overlay drawn at thumbnail size (so its contour stays
    visible), as a JPEG data URI."""
    from PIL import Image
    from .report import data_uri, thumbnail_size
    from .visualise import overlay
    th, tw = thumbnail_size(h, w)
    if rgb is None:
        small = np.full((th, tw, 3), 40, np.uint8)
    else:
        # Subsample to <= 4x the thumbnail first (cheap on 64 MP), then filter down.
        sy, sx = max(1, h // (4 * th)), max(1, w // (4 * tw))
        pre = np.ascontiguousarray(rgb[::sy, ::sx])
        small = np.array(Image.fromarray(pre).resize((tw, th), Image.BOX))
    prob, std = _maps_at(res, th, tw, antialias=True)
    return data_uri(overlay(small, prob > 0.5, std)), [th, tw]


def write_outputs(prep: Prepared, res, opts: BatchOptions, gt: GroundTruth | None,
                  settings: dict) -> tuple[dict, str | None]:
    """Write one image's outputs (mask last), then its record. Returns (record, scoring
    failure or None). `res` is segment()'s result at model size."""
    from .uncertainty import entropy_map
    from .visualise import heatmap_strips, overlay_inplace, strip_rows
    item, h, w, out = prep.item, prep.height, prep.width, opts.output
    paths = output_paths(out, item.key, opts.kinds())
    prob, std = _maps_at(res, h, w)                      # 2 x 4 bytes per pixel
    mask = prob > 0.5
    n = h * w
    entropy_sum = 0.0
    for r0, r1 in strip_rows(h, w):
        entropy_sum += float(entropy_map(prob[r0:r1]).sum())
    stats = {"area_px": int(np.count_nonzero(mask)), "area_fraction": 0.0,
             "mean_uncertainty": float(std.mean(dtype=np.float64)),
             "mean_entropy": entropy_sum / n}
    stats["area_fraction"] = stats["area_px"] / n
    band = std > UNCERTAIN_ABOVE
    stats["uncertain_fraction"] = int(np.count_nonzero(band)) / n
    if opts.maps:
        p16 = np.empty((h, w), np.uint16)
        for r0, r1 in strip_rows(h, w):
            p16[r0:r1] = (prob[r0:r1] * 65535 + 0.5).astype(np.uint16)
        write_png(paths["probability"], p16)
        del p16
        write_png(paths["uncertainty"], heatmap_strips(std, vmax=0.5))
    del prob, std
    thumb, thumb_size = "", [0, 0]
    if opts.overlay or opts.report:
        rgb = decode_rgb8(item.path, h, w)
        thumb, thumb_size = _thumbnail(rgb, res, h, w)
        if opts.overlay:
            write_png(paths["overlay"], overlay_inplace(rgb, mask, band))
        del rgb
    del band
    write_png(paths["mask"], mask.astype(np.uint8) * 255, compress_level=6)
    metrics, score_error = None, None
    if gt is not None:
        try:
            metrics = gt.score(item, mask)
        except ValueError as e:
            score_error = str(e)
    record = {"key": item.key, "input": str(item.path.resolve()), "width": w, "height": h,
              "model_input": ("full" if prep.downscaled is None
                              else f"downscaled from {prep.downscaled[1]}x{prep.downscaled[0]}"),
              **stats,
              "outputs": {k: p.relative_to(out).as_posix() for k, p in paths.items()},
              "input_fingerprint": prep.fingerprint, "settings": settings,
              "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "thumbnail": thumb, "thumbnail_size": thumb_size}
    write_text(record_path(out, item.key), json.dumps(record))
    record["metrics"] = metrics
    return record, score_error


def finished_record(item: InputImage, opts: BatchOptions) -> dict | None:
    """The item's record if it is finished for these options, else None."""
    rp = record_path(opts.output, item.key)
    try:
        rec = json.loads(rp.read_text())
        if rec.get("input_fingerprint") != _fingerprint(item.path):
            return None
    except (OSError, ValueError):
        return None
    paths = output_paths(opts.output, item.key, opts.kinds())
    if not all(p.is_file() for p in paths.values()):
        return None
    rec["outputs"] = {k: p.relative_to(opts.output).as_posix() for k, p in paths.items()}
    return rec


# --------------------------------------------------------------------------- summaries

RESULT_COLUMNS = ("image", "input", "status", "width", "height", "model_input", "area_px",
                  "area_fraction", "mean_uncertainty", "mean_entropy", "uncertain_fraction")


def _json_safe(x):
    """Non-finite floats become null (JSON has no inf/nan; browsers reject them)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def write_summaries(out: Path, records: list[dict], failures: list[tuple[str, str]],
                    info: dict, report: bool) -> None:
    """results.json, results.csv, metrics.csv (when scored) and index.html, atomically."""
    from .evaluate import METRIC_KEYS, write_csv
    public = [{k: v for k, v in r.items() if k not in ("thumbnail", "thumbnail_size",
                                                        "input_fingerprint", "settings")}
              for r in records]
    scored = [r for r in records if r.get("metrics") is not None]
    doc = {"tool": "dsd-fast segment", "settings": info["settings"], "counts": info["counts"],
           "images": public,
           "failed": [{"input": n, "error": why} for n, why in failures]}
    if info.get("summary") is not None:
        doc["metrics_summary"] = info["summary"]
    write_text(out / "results.json", json.dumps(_json_safe(doc), indent=1) + "\n")

    columns = RESULT_COLUMNS + (METRIC_KEYS if scored else ())
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for r in records:
        row = {**r, **(r.get("metrics") or {}), "image": r["key"]}
        writer.writerow([(f"{row[c]:.6g}" if isinstance(row.get(c), float) else row.get(c, ""))
                         for c in columns])
    write_text(out / "results.csv", buf.getvalue())
    if scored:
        write_csv([{"image": r["key"], **r["metrics"]} for r in scored], out / "metrics.csv")
    if report:
        from .report import render_report
        write_text(out / "index.html", render_report(records, failures, info))


# --------------------------------------------------------------------------- the run

@dataclass
class RunSummary:
    exit_code: int
    segmented: int = 0
    skipped: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)
    interrupted: bool = False
    elapsed_s: float = 0.0


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, MemoryError) or "out of memory" in str(e).lower() \
        or "can't allocate memory" in str(e).lower()


@contextlib.contextmanager
def _signals_interrupt():
    """SIGTERM (plain `kill`) interrupts like Ctrl-C, so temp files get cleaned up too."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Interrupted(signum)
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _settings(opts: BatchOptions, model) -> dict:
    if opts.checkpoint is not None:
        ckpt = str(Path(opts.checkpoint).resolve())
    elif model is not None:
        ckpt = "(model object)"
    else:
        ckpt = "(bundled default)"
    return {"checkpoint": ckpt, "steps": opts.steps, "ensemble": opts.ensemble,
            "seed": opts.seed, "clip_x0": opts.clip_x0}


def run(inputs: Sequence[str], opts: BatchOptions, model=None, out=None, err=None) -> RunSummary:
    """Segment `inputs` into opts.output; prints progress and a summary; never raises for
    bad images, bad arguments or interrupts (see RunSummary.exit_code: 0 all done, 1 some
    image failed or writing failed, 2 the run could not start, 130 / 143 interrupted)."""
    out_s, err_s = out or sys.stdout, err or sys.stderr
    t0 = time.monotonic()
    try:
        with _signals_interrupt():
            return _run(inputs, opts, model, out_s, err_s, t0)
    except UsageError as e:
        print(f"error: {e}", file=err_s)
        return RunSummary(exit_code=2, elapsed_s=time.monotonic() - t0)
    except KeyboardInterrupt as e:               # before anything was written
        signum = getattr(e, "signum", signal.SIGINT)
        print("interrupted", file=err_s)
        return RunSummary(exit_code=128 + signum, interrupted=True)


def _run(inputs, opts: BatchOptions, model, out_s, err_s, t0) -> RunSummary:
    import torch
    from tqdm.auto import tqdm

    out = opts.output
    if out.exists() and not out.is_dir():
        raise UsageError(f"output {out} exists and is not a folder")
    found = discover(inputs, opts.recursive, exclude=out)
    if not found.images and not found.missing:
        raise UsageError("no input images found")
    if not opts.allow_inplace and any(_is_inside(out, d) for d in found.input_dirs):
        raise UsageError(f"output folder {out} is inside an input folder; choose another -o, "
                         "or pass --allow-inplace")
    gt = GroundTruth(opts.gt) if opts.gt else None
    failures: list[tuple[str, str]] = list(found.missing)
    if not found.images:
        return _finish(out, opts, [], failures, None, 0, 0, False, out_s, err_s, t0,
                       write=False)

    out.mkdir(parents=True, exist_ok=True)
    with OutputLock(out):
        remove_stale_temp_files(out)
        settings = _settings(opts, model)
        inputs_real = {im.path.resolve() for im in found.images}
        done: dict[str, dict] = {}              # key -> record of finished images
        todo: list[InputImage] = []
        mismatched, example = 0, None
        for im in found.images:
            clash = [p for p in output_paths(out, im.key, opts.kinds()).values()
                     if p.resolve() in inputs_real]
            if clash:
                failures.append((str(im.path), f"output {clash[0]} would overwrite an input"))
                continue
            rec = None if opts.overwrite else finished_record(im, opts)
            if rec is None:
                todo.append(im)
            else:
                if rec.get("settings") != settings:
                    mismatched += 1
                    example = example or rec.get("settings") or {}
                rec["status"] = "skipped"
                done[im.key] = rec
        if mismatched:
            diff = ", ".join(f"{k} {example.get(k)} instead of {v}" for k, v in settings.items()
                             if example.get(k) != v)
            print(f"note: {mismatched} finished image(s) were made with other settings "
                  f"({diff}); they are kept, pass --overwrite to redo them", file=err_s)
        skipped = len(done)
        segmented = 0
        interrupted = 0
        fatal = None
        order = [im.key for im in found.images]

        def records():
            return [done[k] for k in order if k in done]

        threads_before = torch.get_num_threads()
        try:
            if todo:
                if opts.threads:
                    torch.set_num_threads(opts.threads)
                model = _load_model(model, opts)
                size = model.preprocessing.image_size
                batch = opts.batch_size or auto_batch_size(model, opts.ensemble)
                bar = tqdm(total=len(todo), unit="img", desc="segment", disable=opts.quiet,
                           file=err_s, dynamic_ncols=True)
                last_summary = time.monotonic()
                try:
                    queue = list(todo)
                    while queue and not (opts.fail_fast and failures):
                        chunk, queue = _take_prepared(queue, batch, size, opts, failures, bar)
                        if not chunk:
                            continue
                        results, batch = _segment_chunk(chunk, model, opts, batch, failures, bar)
                        for prep, res in results:
                            try:
                                rec, score_error = write_outputs(prep, res, opts, gt, settings)
                            except ImageInputError as e:
                                failures.append((str(prep.item.path), str(e)))
                            except MemoryError:
                                failures.append((str(prep.item.path),
                                                 "out of memory while writing its outputs"))
                            else:
                                rec["status"] = "segmented"
                                done[prep.item.key] = rec
                                segmented += 1
                                if score_error:
                                    failures.append((str(prep.item.path), score_error))
                            bar.update(1)
                            if opts.fail_fast and failures:
                                break
                        if time.monotonic() - last_summary > SUMMARY_EVERY_S:
                            _write_summaries_quietly(out, records(), failures, opts, settings,
                                                     gt, segmented, skipped, err_s)
                            last_summary = time.monotonic()
                finally:
                    bar.close()
        except OutputError as e:
            fatal = str(e)
        except KeyboardInterrupt as e:
            interrupted = getattr(e, "signum", signal.SIGINT)
            remove_stale_temp_files(out)      # a temp file created in the last instant
        finally:
            torch.set_num_threads(threads_before)
        if opts.overwrite:                     # stopped early: earlier outputs still count
            failed_names = {n for n, _ in failures}
            for im in found.images:
                if im.key not in done and str(im.path) not in failed_names:
                    rec = finished_record(im, opts)
                    if rec is not None:
                        rec["status"] = "earlier"
                        done[im.key] = rec
        if gt is not None:                     # score the skipped images from their masks
            _score_skipped(done, found.images, gt, out, failures)
        return _finish(out, opts, records(), failures, gt, segmented, skipped, interrupted,
                       out_s, err_s, t0, settings=settings, fatal=fatal,
                       total=len(found.images) + len(found.missing))


def _load_model(model, opts: BatchOptions):
    from .checkpoint import CheckpointError
    from .segmentation import resolve_model
    try:
        return resolve_model(model if model is not None else opts.checkpoint)
    except (FileNotFoundError, CheckpointError, OSError, ValueError) as e:
        raise UsageError(f"cannot load the model: {e}") from None


def _take_prepared(queue, batch, size, opts, failures, bar):
    """Decode images from the queue until `batch` are ready (failures recorded)."""
    chunk = []
    while queue and len(chunk) < batch:
        item = queue.pop(0)
        try:
            chunk.append(prepare(item, size, opts.max_pixels))
        except ImageInputError as e:
            failures.append((str(item.path), str(e)))
            bar.update(1)
            if opts.fail_fast:           # finish the images before it, then stop
                return chunk, []
        except MemoryError:
            failures.append((str(item.path), "out of memory while decoding it"))
            bar.update(1)
    return chunk, queue


def _segment_chunk(chunk, model, opts, batch, failures, bar):
    """segment() on the chunk, `batch` images per call (one network batch each). When the
    network runs out of memory the batch is halved, for the rest of the run too.
    Returns ([(prepared, result)], batch)."""
    from . import segmentation
    done, i = [], 0
    while i < len(chunk):
        piece = chunk[i:i + batch]
        try:
            # Noise keyed by each image's output name: a resumed or re-batched run gives
            # every image the same chains as an uninterrupted one.
            res = segmentation.segment([p.model_chw for p in piece], steps=opts.steps,
                                       ensemble=opts.ensemble, model=model, seed=opts.seed,
                                       batch_size=len(piece),
                                       noise_keys=[p.item.key for p in piece],
                                       clip_x0=opts.clip_x0)
        except (MemoryError, RuntimeError) as e:
            if not _is_oom(e):
                raise
            if len(piece) > 1:
                batch = max(1, len(piece) // 2)
                continue
            failures.append((str(piece[0].item.path), "out of memory in the network"))
            bar.update(1)
        except FloatingPointError as e:
            for p in piece:
                failures.append((str(p.item.path), f"the sampler failed: {e}"))
                bar.update(1)
        else:
            done.extend(zip(piece, res))
        i += len(piece)
    return done, batch


def _score_skipped(done, images, gt, out, failures):
    from .data import load_mask
    for im in images:
        rec = done.get(im.key)
        if rec is None or rec.get("status") not in ("skipped", "earlier"):
            continue
        try:
            mask = load_mask(out / rec["outputs"]["mask"]).numpy()
            rec["metrics"] = gt.score(im, mask)
        except (ValueError, ImageInputError) as e:
            rec["metrics"] = None
            failures.append((str(im.path), str(e)))


def _info(opts, settings, gt, records, segmented, skipped, failures):
    summary = None
    scored = [dict(r["metrics"]) for r in records if r.get("metrics") is not None]
    if scored:
        from .metrics import summarise
        summary = summarise(scored)
    title = f"dsd-fast segment: {opts.output.resolve().name}"
    return {"title": title, "settings": settings,
            "counts": {"segmented": segmented, "skipped": skipped, "failed": len(failures)},
            "summary": summary}


def _write_summaries_quietly(out, records, failures, opts, settings, gt, segmented, skipped,
                             err_s):
    """Periodic update during the run: a failure here must not stop the segmentation."""
    try:
        write_summaries(out, records, failures,
                        _info(opts, settings, gt, records, segmented, skipped, failures),
                        opts.report)
    except OutputError as e:
        print(f"warning: {e}", file=err_s)


def _finish(out, opts, records, failures, gt, segmented, skipped, interrupted, out_s, err_s,
            t0, settings=None, fatal=None, total=None, write=True) -> RunSummary:
    info = _info(opts, settings or {}, gt, records, segmented, skipped, failures)
    if write:
        try:
            write_summaries(out, records, failures, info, opts.report)
        except OutputError as e:
            fatal = fatal or str(e)
        except KeyboardInterrupt as e:
            interrupted = interrupted or getattr(e, "signum", signal.SIGINT)
    elapsed = time.monotonic() - t0
    if info["summary"] is not None:
        from .evaluate import format_summary
        print(format_summary(info["summary"], info["summary"]["n_images"]), file=out_s)
        print(f"per-image metrics: {out / 'metrics.csv'}", file=out_s)
    for name, why in failures:
        print(f"failed: {why if name in why else f'{name}: {why}'}", file=err_s)
    total = total if total is not None else len(records) + len(failures)
    rate = f", {segmented / elapsed:.2f} images/s" if segmented and elapsed > 0 else ""
    print(f"segmented {segmented}, skipped {skipped} (already done), failed {len(failures)} "
          f"of {total} inputs in {elapsed:.1f} s{rate}; outputs in {out}", file=out_s)
    if write:
        print(f"results: {out / 'results.json'}, {out / 'results.csv'}"
              + (f"; report: {out / 'index.html'}" if opts.report else ""), file=out_s)
    if fatal:
        print(f"error: {fatal}; stopped", file=err_s)
    if interrupted:
        print(f"interrupted: {len(records)} of {total} inputs finished; run the same command "
              "again to resume", file=err_s)
        code = 128 + int(interrupted)
    elif fatal or failures:
        code = 1
    else:
        code = 0
    return RunSummary(exit_code=code, segmented=segmented, skipped=skipped, failures=failures,
                      records=records, interrupted=bool(interrupted), elapsed_s=elapsed)
