"""What the segmenter's loop reads from an image beside its view (segmenter.py): the picture
a CRF refines on, and crop="zoom"'s crop of a finer pass's box.

An image is either

    in memory   a (C, H, W) tensor in [0, 1] at the image's size (segment(), volumes)
    a source    an object that reads the image again when asked, one image at a time (the
                command line's files, cli/image_sources.py), so a batch never holds its
                images at full size; it has
                    picture(box) -> (h, w, 3) uint8 of `box` (None: the whole image) at
                                    the result's size
                    crop(box, max_pixels) -> (C, h, w) float in [0, 1] of `box`, at most
                                    `max_pixels` pixels (zoom.fit_pixels)
                and answers None where the image can no longer be read (its file changed
                or went since its view was made), keeping why in its `error`.

The CRF's picture is the image as a viewer sees it, `channels.channel_picture`: three
channels as RGB, one channel (grey) replicated, N others: the first channel replicated
(the DenseCRF's bilateral kernel compares RGB colours; no other N-channel rule is
published).
"""
from __future__ import annotations

import torch

from .channels import channel_picture
from .zoom import Box, crop_image, fit_pixels


def crf_picture(image, box: Box | None = None) -> torch.Tensor | None:
    """(3, h, w) uint8 tensor: the picture a CRF refines on, of `box` (None: the whole
    image) at the result's size; None where a source can no longer read its image."""
    if isinstance(image, torch.Tensor):
        part = image if box is None else image[:, box.slices[0], box.slices[1]]
        picture = channel_picture(part)
    else:
        picture = image.picture(box)
        if picture is None:
            return None
    return torch.from_numpy(picture).permute(2, 0, 1)


def zoom_crop(image, size_hw: tuple[int, int], box: Box, max_pixels: int
              ) -> torch.Tensor | None:
    """(C, h, w) in [0, 1]: a finer zoom pass's crop of `box` (in the pixels of the image's
    result, `size_hw`), reduced to at most `max_pixels`; None where a source can no longer read
    its image."""
    if isinstance(image, torch.Tensor):
        return fit_pixels(crop_image(image, size_hw, box), max_pixels)
    return image.crop(box, max_pixels)
