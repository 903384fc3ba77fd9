"""Writing files safely: every writer in the package goes through `atomic_write`.

A file is written to a temporary name in the target's own folder (same file system, so the
rename is atomic), flushed and fsync'ed, then renamed over the target: a reader, or a crash
at any moment, sees either the old file or the complete new one, never a part. The temporary
file is removed on any error, Ctrl-C included.
"""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Callable

TMP_SUFFIX = ".dsd.tmp"        # temporary files are `.<target name>.<random>.dsd.tmp`


class WriteError(OSError):
    """A file could not be written (disk full, permissions, read-only file system, a name
    too long); the message names the file and `.errno` is the cause's. An OSError, so
    callers that catch OSError keep working."""


# Causes that will fail every later write as well (the run should stop), as opposed to
# ones that concern one file (a name too long, a character the file system refuses).
WHOLE_FOLDER_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM,
                       errno.EIO}


def _write_error(target: Path, cause: OSError) -> WriteError:
    err = WriteError(f"cannot write {target}: {cause}")
    err.errno = cause.errno
    return err


def atomic_write(target, write: Callable) -> Path:
    """Write `target` through `write(binary_file)`, atomically (see the module docstring).
    OSErrors become WriteError naming the target."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # `.<start of the name>.<random>.dsd.tmp`: cut so that a target name near the
        # 255-byte limit still leaves room for the temporary name's additions.
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name[:64]}.",
                                   suffix=TMP_SUFFIX)
    except OSError as e:
        raise _write_error(target, e) from e
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
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            raise _write_error(target, e) from e
        raise
    return target


def atomic_write_path(target, write_to: Callable[[str], None]) -> Path:
    """For writers that want a file name (torch.onnx.export): `write_to(tmp_name)` writes a
    temporary file beside `target`, which is then fsync'ed and renamed over it; removed on
    any error."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name[:64]}.",
                                   suffix=TMP_SUFFIX)
        os.close(fd)
    except OSError as e:
        raise _write_error(target, e) from e
    try:
        write_to(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            raise _write_error(target, e) from e
        raise
    return target


def write_text(target, text: str) -> Path:
    """UTF-8 text. File names that are not valid UTF-8 reach Python as lone surrogates
    (surrogateescape); they are written back as the file name's own bytes."""
    data = text.encode("utf-8", errors="surrogateescape")
    return atomic_write(target, lambda f: f.write(data))


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value):
    """A text value for a CSV cell that a spreadsheet will not run as a formula: text
    starting with = + - @, tab or CR (a file named `=cmd|calc!A1.png`) gets a leading
    apostrophe (OWASP's advice for CSV injection). Other values are returned as they are."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def write_png(target, arr, compress_level: int = 1) -> Path:
    """uint8 (H, W) / (H, W, 3) or uint16 (H, W) (16-bit PNG) array -> PNG, atomically.
    Level 1 zlib: ~5x faster than PIL's default 6 for ~15% larger photos."""
    from PIL import Image
    im = Image.fromarray(arr)
    return atomic_write(target, lambda f: im.save(f, format="PNG",
                                                  compress_level=compress_level))


def torch_save(obj, target) -> Path:
    """torch.save, atomically (training checkpoints)."""
    import torch
    return atomic_write(target, lambda f: torch.save(obj, f))


def remove_stale_temp_files(folder) -> int:
    """Delete temporary files a killed writer left under `folder` (only names made here)."""
    n = 0
    for root, _, files in os.walk(folder):
        for f in files:
            if f.startswith(".") and f.endswith(TMP_SUFFIX):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(root, f))
                    n += 1
    return n


_UMASK = None


def _umask() -> int:
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0o022)    # reading the umask means setting it: set it back at once
        os.umask(_UMASK)
    return _UMASK
