"""The input side of `dsd-fast segment`: which files are images to segment, their output
names (keys), and decoding each into its network input.

Inputs are files, folders (with `recursive`, their subfolders too) and glob patterns. Each
input gets a key, its path relative to the folder (or the glob's fixed leading part) it was
found under, without the suffix: `in/sub/a.png` found under `in` is `sub/a`. Outputs mirror
the key, so two `a.png` in different subfolders cannot overwrite each other. Keys are in
Unicode NFC (images.nfc): a macOS-written (NFD) name gives the key, output names and
ground-truth match that the same name typed elsewhere gives.
"""
from __future__ import annotations

import fnmatch
import glob as globlib
import hashlib
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Sequence

from ..channels import (ARRAY_SUFFIX, ChannelNote, channel_picture, is_channel_folder,
                        model_image, npy_shape, reads_as_channels)
from ..images import (IMAGE_SUFFIXES, ImageInputError, array_to_chw, decode_reduced,
                      decode_rgb8, nfc, open_image, pending_orientation, pil_to_array, upright,
                      upright_size, warn_first_frame)
from . import memory
from ..volumes.brats import is_case_folder
from ..volumes.reader import is_dicom_series_folder, is_nifti as is_nifti_name

BYTES_PER_OUTPUT_PIXEL = 24    # peak bytes per pixel while an image's outputs are written
# File names are at most 255 bytes on common file systems; the longest name made from a key
# is "<stem>_uncertainty.png" (16 bytes added). Longer stems are cut and given a digest.
NAME_MAX = 255
LONGEST_OUTPUT_SUFFIX = len("_uncertainty.png")
DISAMBIGUATION_ROOM = 16       # what _make_keys_unique may append ("_jpeg_12")
# Names this command writes: in the output folder such files are not inputs.
OUTPUT_NAME = re.compile(r".*((_mask|_prob|_uncertainty|_overlay)\.png"
                         r"|(_mask|_prob|_uncertainty)\.nii\.gz)$", re.IGNORECASE)
_GLOB_CHARS = re.compile(r"[*?[]")
# A .npy in a folder is an input only when shaped like an image, (H, W) or (H, W, N), and
# not named like a mask: arrays of ids, coordinates or ground truth often sit beside images
# (a file named explicitly is always tried).
NPY_MIN_SIDE = 8
NPY_MAX_CHANNELS = 16
# stems of masks and ground truth (as --gt folders and BraTS' *_seg, and this command's own
# _mask / _labels outputs, name them): "z0_gt", "z0-mask", "case_seg", "a.labels"
MASK_LIKE_STEM = re.compile(r"(^|[_.-])(gt|mask|masks|seg|segmentation|label|labels|"
                            r"groundtruth|ground_truth|annotation|annotations)$", re.IGNORECASE)


class SkippedInputNote(UserWarning):
    """Files in an input folder that were not taken as images (one line names them)."""


@dataclass
class InputImage:
    path: Path
    key: str            # output name without suffix, posix, relative: "sub/a"
    rel_dir: str        # folder of the input relative to where it was found ("" at the top)

    @property
    def stem(self) -> str:
        """The file's stem in NFC (ground truth is matched by it)."""
        return nfc(_stem(self.path.name, self.path.is_dir()))


def _stem(name: str, is_dir: bool) -> str:
    """A file's stem; a volume's without .nii.gz (volume_inputs.py), a case folder's name."""
    if is_dir:
        return name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[:-len(suffix)]
    return PurePosixPath(name).stem


@dataclass
class Discovery:
    images: list[InputImage]
    missing: list[tuple[str, str]]          # (argument, why nothing came of it)
    input_dirs: list[Path]                  # resolved folders that hold or gave inputs
    # (file, why it is no image) of .npy files a folder or glob held and that were left out
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def npy_not_an_image(path: Path) -> str | None:
    """Why a .npy found in a folder is not listed as an image (its header only is read),
    or None when it is one: not image-shaped, or named like a mask / ground truth."""
    if MASK_LIKE_STEM.search(path.stem):
        return "named like a mask"
    shape = npy_shape(path)
    if shape is None:
        return "not a readable .npy of numbers"
    if len(shape) not in (2, 3) or min(shape[:2]) < NPY_MIN_SIDE \
            or (len(shape) == 3 and not 1 <= shape[2] <= NPY_MAX_CHANNELS):
        return f"shape {shape}"
    return None


def _skipped_note(skipped: list[tuple[Path, str]]) -> str:
    """One line for all .npy files left out, naming a few."""
    shown = ", ".join(f"{p.name} ({why})" for p, why in skipped[:4])
    more = f" and {len(skipped) - 4} more" if len(skipped) > 4 else ""
    return (f"{len(skipped)} .npy file{'s' if len(skipped) > 1 else ''} not taken as images: "
            f"{shown}{more}; a .npy image is read as (H, W) or (H, W, N) with sides of at "
            f"least {NPY_MIN_SIDE} and N <= {NPY_MAX_CHANNELS}, and is not named like a mask "
            "(_gt, _mask, _seg, ...); name a file to segment it anyway")


def is_inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def is_volume_folder(p: Path) -> bool:
    """A BraTS case folder or a DICOM series folder: one volume input (volume_inputs.py)."""
    return is_case_folder(p) or is_dicom_series_folder(p)


def is_input_folder(p: Path) -> bool:
    """A folder that is one input: a volume folder, or a channel folder (one file per
    channel, channels.py) that is one image."""
    return is_volume_folder(p) or is_channel_folder(p)


def _glob_base(pattern: str) -> Path:
    """The fixed leading folders of a glob pattern: `data/*/x*.png` -> `data`."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts[:-1]:
        if _GLOB_CHARS.search(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _glob(pattern: str) -> list[str]:
    """glob.glob(pattern, recursive=True), except that `**` never descends into symbolic
    links to folders, as folder walking does not (os.walk): a link loop (`d/loop -> d`)
    cannot make it run forever. `*`, `?` and `[...]` match within one name and, as in glob,
    not a leading dot."""
    if "**" not in pattern:
        return sorted(globlib.glob(pattern))
    parts = Path(pattern).parts
    fixed = len(_glob_base(pattern).parts) if str(_glob_base(pattern)) != "." else 0
    start = Path(*parts[:fixed]) if fixed else Path(".")
    out: set[str] = set()

    def entries(folder: Path):
        try:
            with os.scandir(folder) as it:
                return sorted(it, key=lambda e: e.name)
        except OSError:
            return []

    def expand(folder: Path, segs: tuple[str, ...], shown: Path) -> None:
        if not segs:
            out.add(str(shown))
            return
        head, rest = segs[0], segs[1:]
        if head == "**":
            expand(folder, rest, shown)                     # zero folders
            for e in entries(folder):
                if e.name.startswith("."):
                    continue
                if e.is_dir(follow_symlinks=False):
                    expand(Path(e.path), segs, shown / e.name)   # one more folder
                elif not rest:
                    out.add(str(shown / e.name))                 # trailing ** lists files
            return
        for e in entries(folder):
            if e.name.startswith(".") and not head.startswith("."):
                continue
            if not fnmatch.fnmatchcase(e.name, head):
                continue
            if rest:
                if e.is_dir():
                    expand(Path(e.path), rest, shown / e.name)
            else:
                out.add(str(shown / e.name))

    expand(start, tuple(parts[fixed:]), start)
    return sorted(out)


def short_name(stem: str) -> str:
    """`stem` if every output name made from it fits in NAME_MAX bytes, else its start cut
    at a character boundary plus "~" and a 10-digit digest of the whole stem (stable, so a
    re-run finds the same outputs)."""
    raw = os.fsencode(stem)
    budget = NAME_MAX - LONGEST_OUTPUT_SUFFIX - DISAMBIGUATION_ROOM
    if len(raw) <= budget:
        return stem
    digest = hashlib.sha256(raw).hexdigest()[:10]
    room = budget - len(digest) - 1
    cut = stem[:room]
    while len(os.fsencode(cut)) > room:             # multi-byte characters: cut further
        cut = cut[:-1]
    return f"{cut}~{digest}"


def discover(specs: Sequence[str], recursive: bool = False,
             exclude: Path | None = None) -> Discovery:
    """Expand files, folders and globs into InputImages with unique keys.

    Folders list image files (IMAGE_SUFFIXES, .npy arrays, NIfTI volumes; hidden files
    skipped), recursively with `recursive`, and the folders in them that are one input each
    (`is_input_folder`: BraTS cases, DICOM series, channel folders); a file named explicitly
    is always tried, whatever its suffix. A listed .npy must be image-shaped and not named
    like a mask (`npy_not_an_image`); those left out are in `skipped` and named in one
    SkippedInputNote warning. `exclude`
    (the output folder) is never walked into, and in it files named like this command's
    outputs are not inputs (so `--allow-inplace` re-runs do not segment their own masks).
    """
    found: list[tuple[Path, Path | None]] = []      # (file, folder its key is relative to)
    missing: list[tuple[str, str]] = []
    dirs: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    excl = exclude.resolve() if exclude is not None else None

    def listable(p: Path) -> bool:
        if p.name.startswith("."):
            return False
        suffix = p.suffix.lower()
        if suffix not in IMAGE_SUFFIXES and suffix != ARRAY_SUFFIX \
                and not is_nifti_name(p.name):
            return False
        if excl is not None and OUTPUT_NAME.match(p.name) and is_inside(p, excl):
            return False
        if not p.is_file():
            return False
        why = npy_not_an_image(p) if suffix == ARRAY_SUFFIX else None
        if why is not None:
            skipped.append((p, why))
        return why is None

    def walk(folder: Path, base: Path, deep: bool) -> None:
        dirs.append(folder.resolve())
        if not deep:
            found.extend((p, base) for p in sorted(folder.iterdir())
                         if listable(p) or (not p.name.startswith(".") and is_input_folder(p)))
            return
        for root, subdirs, files in os.walk(folder):
            root_p = Path(root)
            subdirs[:] = sorted(d for d in subdirs if not d.startswith(".")
                                and not (excl is not None and (root_p / d).resolve() == excl))
            cases = [d for d in subdirs if is_input_folder(root_p / d)]    # an input each
            found.extend((root_p / d, base) for d in cases)
            subdirs[:] = [d for d in subdirs if d not in cases]
            found.extend((root_p / f, base) for f in sorted(files) if listable(root_p / f))

    for spec in specs:
        p = Path(spec)
        if is_input_folder(p):              # a BraTS case, a DICOM series, a channel folder
            found.append((p, None))
            dirs.append(p.resolve())
        elif p.is_dir():
            walk(p, p, recursive)
        elif p.is_file():
            found.append((p, None))
            dirs.append(p.resolve().parent)
        elif p.exists():
            missing.append((spec, "not a regular file (a FIFO, socket or device?)"))
        elif p.is_symlink():
            missing.append((spec, f"a symbolic link to {os.readlink(p)}, which does not exist"))
        elif _GLOB_CHARS.search(spec):
            matches = _glob(spec)
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
        rel = PurePosixPath(nfc(str(rel)))
        rel_dir = "" if str(rel.parent) == "." else str(rel.parent)
        key = str(rel.parent / short_name(_stem(rel.name, path.is_dir())))
        images.append(InputImage(path, key, rel_dir))
    _make_keys_unique(images)
    skipped = list(dict.fromkeys(skipped))          # a file listed twice is named once
    if skipped:
        warnings.warn(_skipped_note(skipped), SkippedInputNote, stacklevel=2)
    return Discovery(images, missing, sorted(set(dirs)), skipped)


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


# ----------------------------------------------------------------------------- decoding

def _check_memory(path: Path, h: int, w: int) -> None:
    need = BYTES_PER_OUTPUT_PIXEL * h * w
    avail = memory.available_memory()
    if avail is not None and need > 0.9 * avail:
        raise ImageInputError(
            f"{path}: {w} x {h} pixels needs about {need / 2**30:.1f} GiB to write its "
            f"outputs, only {avail / 2**30:.1f} GiB is available")


def reduced_pixels(size: int, max_pixels: int) -> int:
    """Pixels of the reduced decode of a large image: (16 S)^2 for model size S (4.2 MP at
    S = 128) is ample for the antialiased resize to S x S, and at most max_pixels."""
    return max(1, min(max_pixels, (16 * size) ** 2))


@dataclass
class Prepared:
    item: InputImage
    model_chw: object                 # (C, S, S) float tensor: the segmenter's view
    height: int
    width: int
    downscaled: tuple[int, int] | None   # (h, w) the model input was made from, if reduced
    fingerprint: dict
    frames: int = 1                   # of an animated / multi-page file (the first is used)
    # (H, W, 3) uint8 the overlay is drawn on, for inputs that are no picture file (.npy,
    # channel folders); None: decoded from the file when the overlay is drawn
    picture: object = None


def overlay_picture(prep: Prepared):
    """(H, W, 3) uint8: the picture an image's overlay and thumbnail are drawn on."""
    if prep.picture is not None:
        return prep.picture.copy()          # overlays draw in place
    return decode_rgb8(prep.item.path, prep.height, prep.width)


def fingerprint(path: Path) -> dict:
    """What says an input is unchanged since its record: size and mtime; for a folder
    input (a volume or channel folder) its files' total size and latest mtime."""
    st = path.stat()
    if not path.is_dir():
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    size, latest, n = 0, st.st_mtime_ns, 0
    for p in sorted(path.iterdir()):
        if p.is_file():
            fs = p.stat()
            size, latest, n = size + fs.st_size, max(latest, fs.st_mtime_ns), n + 1
    return {"size": size, "mtime_ns": latest, "files": n}


def prepare(item: InputImage, segmenter, max_pixels: int, opts=None) -> Prepared:
    """Decode one image into the segmenter's view of it under the run's resolved segment
    options `opts` (`segmenter.view`: what `segment()` makes of the same picture). Above
    `max_pixels` the view is made from a reduced decode."""
    path = item.path
    fp = fingerprint(path) if path.exists() else {}
    stack = reads_as_channels(path, segmenter.channels)     # .npy, channel folder, TIFF pages
    if segmenter.channels != 3 or stack:                     # channels.py reads these
        chw, note = model_image(path, 0, segmenter.channels)
        if note:
            warnings.warn(f"{note} (the model takes {segmenter.channels}-channel images)",
                          ChannelNote, stacklevel=2)
        picture = channel_picture(chw) if stack else None
        return Prepared(item, segmenter.view(chw, opts), chw.shape[1], chw.shape[2], None, fp,
                        picture=picture)
    with open_image(path) as im:
        w, h = upright_size(im)                 # the picture as shown (EXIF orientation)
        _check_memory(path, h, w)
        frames = warn_first_frame(im, path)
        if w * h <= max_pixels:
            tag = pending_orientation(im)
            im.load()
            arr, downscaled = pil_to_array(upright(im, tag)), None
        else:
            small = decode_reduced(im, reduced_pixels(segmenter.preprocessing.image_size,
                                                      max_pixels))
            arr, downscaled = pil_to_array(small), (small.size[1], small.size[0])
    chw = array_to_chw(arr, str(path))
    del arr
    return Prepared(item, segmenter.view(chw, opts), h, w, downscaled, fp, frames)
