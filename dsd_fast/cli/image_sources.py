"""The command line's images as sources (dsd_fast/image_sources.py): each input file read
again, one image at a time, only when the segmenter asks for the picture a CRF refines on
or for a finer pass's crop under crop="zoom", so a batch never holds its images at full
size.

    picture(box)           (h, w, 3) uint8 of the box (None: the whole image) at the file's
                           resolution, the CRF's picture: channels.channel_picture of the
                           image as the model reads it (an RGB model's file: the overlay's
                           picture, decoded strip by strip; the same pixels)
    crop(box, max_pixels)  (C, h, w) in [0, 1]: the box cut from the decoded file, at most
                           max_pixels and --max-pixels; a file above --max-pixels is decoded
                           reduced (JPEG draft / PIL reduce) to at most --max-pixels, at the
                           scale that gives the box the pixels asked for, and the box cut
                           from that (zoom.box_slices)

A file that can no longer be read as it was (changed or removed since its view was made):
the answer is None and `error` says why; the run records a failed image and goes on.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..channels import channel_picture, model_image, reads_as_channels
from ..images import (ImageInputError, array_to_chw, decode_reduced, decode_rgb8, open_image,
                      pending_orientation, pil_to_array, upright, upright_size)
from ..zoom import Box, box_slices, fit_pixels


@dataclass
class FileSource:
    """One prepared input (discover.Prepared) read again on demand for a model of
    `channels` under the run's `max_pixels` (--max-pixels)."""
    prep: object
    channels: int
    max_pixels: int
    error: str | None = None            # why the last read failed

    def picture(self, box: Box | None = None) -> np.ndarray | None:
        return self._guarded(self._picture, box)

    def crop(self, box: Box, max_pixels: int) -> torch.Tensor | None:
        return self._guarded(self._crop, box, max_pixels)

    # ------------------------------------------------------------------ reading
    def _guarded(self, read, *args):
        try:
            return read(*args)
        except ImageInputError as e:
            self.error = str(e)
        except MemoryError:
            self.error = "out of memory while reading it again"
        return None

    @property
    def _size(self) -> tuple[int, int]:
        return self.prep.height, self.prep.width

    def _by_channels(self) -> bool:
        """Whether channels.py reads it (as `prepare` does): another channel count than
        RGB, or a .npy file or channel folder."""
        return self.channels != 3 or reads_as_channels(self.prep.item.path)

    def _model_image(self) -> torch.Tensor:
        path = self.prep.item.path
        chw = model_image(path, 0, self.channels)[0]
        if tuple(chw.shape[1:]) != self._size:
            raise ImageInputError(f"{path}: changed while it was being segmented")
        return chw

    def _picture(self, box: Box | None) -> np.ndarray:
        rows, cols = box.slices if box is not None else (slice(None), slice(None))
        if self.prep.picture is not None:             # .npy, channel folders: kept
            return np.ascontiguousarray(self.prep.picture[rows, cols])
        if self._by_channels():
            return channel_picture(self._model_image()[:, rows, cols])
        rgb = decode_rgb8(self.prep.item.path, *self._size)
        return rgb if box is None else np.ascontiguousarray(rgb[rows, cols])

    def _crop(self, box: Box, max_pixels: int) -> torch.Tensor:
        limit = min(max_pixels, self.max_pixels)
        if self._by_channels():
            return fit_pixels(self._model_image()[:, box.slices[0], box.slices[1]], limit)
        path = self.prep.item.path
        h, w = self._size
        with open_image(path) as im:
            if upright_size(im) != (w, h):
                raise ImageInputError(f"{path}: changed while it was being segmented")
            if w * h <= self.max_pixels:             # as `prepare`: the whole decode
                tag = pending_orientation(im)
                im.load()
                arr = pil_to_array(upright(im, tag))
            else:        # reduced: the box gets about `limit` pixels, the decode <= budget
                want = math.ceil(limit * w * h / (box.height * box.width))
                arr = pil_to_array(decode_reduced(im, min(self.max_pixels, want)))
        rows, cols = box_slices(box, (h, w), arr.shape[:2])
        chw = array_to_chw(arr[rows, cols], str(path))
        del arr
        return fit_pixels(chw, limit)
