"""Uploads, read and checked in memory: body size, multipart parts, image type and pixels.

The body is read into memory up to the configured size (a larger one is refused as soon as
its Content-Length or its bytes pass the limit) and the multipart form is parsed from that
memory. The image's type and size are checked from memory, allowing only the formats a
dermoscopy image comes in (no Ghostscript-backed EPS, no exotic plugins); only then is it
written to a private temporary folder, decoded by the package's one image reader, and
removed with its folder. Every
refusal is an ApiError: an HTTP status, a short code and a sentence saying what was
expected, which app.py sends as JSON.
"""
from __future__ import annotations

import io
import os
import tempfile

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..images import ImageInputError, array_to_chw, load_image_file

# Formats PIL may decode an upload as: those `dsd-fast segment` reads (images.IMAGE_SUFFIXES)
# and WebP. PIL would otherwise try every plugin it has, some of which run external programs.
UPLOAD_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "WEBP")
FILE_FIELDS = ("file", "image")          # the multipart part holding the image
MAX_FORM_FIELDS = 32                     # parts in one form
MAX_FIELD_BYTES = 1024                   # an option's value (a number, a name)
FORM_OVERHEAD = 64 * 1024                # boundaries, headers and fields beside the image


class ApiError(Exception):
    """A request the server refuses: HTTP `status`, machine-readable `code`, and a
    `message` saying what was expected; `headers` go with the response (Retry-After)."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}

    def __reduce__(self):          # crosses process boundaries intact (Ray replicas)
        return (ApiError, (self.status, self.code, self.message, self.headers))

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, "status": self.status}}


def too_large(limit: int) -> ApiError:
    return ApiError(413, "upload_too_large",
                    f"the upload is larger than this server's limit of {limit:,} bytes")


async def read_body(request, limit: int) -> bytes:
    """The request body, refused (413) once it is known to exceed `limit` bytes: from its
    Content-Length before reading, or while reading when the header lies or is absent."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise too_large(limit)
        except ValueError:
            raise ApiError(400, "bad_request", "Content-Length is not a number") from None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def parse_multipart(body: bytes, content_type: str) -> tuple[bytes | None, dict[str, str]]:
    """multipart/form-data `body` -> (the image part's bytes or None, {field: text}),
    parsed in memory. The image is the part named `file` or `image`."""
    from python_multipart.multipart import MultipartParser, parse_options_header
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "bad_form", "multipart/form-data without a boundary")
    parts: list[dict] = []
    header: dict = {}

    def on_part_begin():
        if len(parts) >= MAX_FORM_FIELDS:
            raise ApiError(400, "bad_form", f"more than {MAX_FORM_FIELDS} form fields")
        parts.append({"headers": {}, "data": []})

    def on_header_field(data, start, end):
        header["field"] = header.get("field", b"") + data[start:end]

    def on_header_value(data, start, end):
        header["value"] = header.get("value", b"") + data[start:end]

    def on_header_end():
        parts[-1]["headers"][header.pop("field", b"").lower()] = header.pop("value", b"")

    def on_part_data(data, start, end):
        parts[-1]["data"].append(data[start:end])

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field,
        "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_part_data": on_part_data})
    try:
        parser.write(body)
        parser.finalize()
    except ApiError:
        raise
    except Exception as e:      # python-multipart's own error types
        raise ApiError(400, "bad_form", f"the multipart form could not be parsed ({e})") \
            from None
    image, fields = None, {}
    for part in parts:
        _, disp = parse_options_header(part["headers"].get(b"content-disposition", b""))
        name = disp.get(b"name", b"").decode("utf-8", "replace")
        data = b"".join(part["data"])
        if name in FILE_FIELDS:
            if image is not None:
                raise ApiError(400, "bad_form", "one image per request: the form has two "
                               "'file' parts (send one request per image)")
            image = data
        elif name:
            if len(data) > MAX_FIELD_BYTES:
                raise ApiError(400, "bad_form", f"form field {name!r} is longer than "
                               f"{MAX_FIELD_BYTES} bytes")
            fields[name] = data.decode("utf-8", "replace")
    return image, fields


def decode_image(data: bytes | None, max_pixels: int) -> torch.Tensor:
    """Image file bytes -> (3, H, W) float32 in [0, 1], decoded by the package's own reader
    (images.load_image_file: EXIF orientation, modes, 16-bit, first frame), so the
    request's noise key and mask are what `dsd_fast.segment(path)` gives the same file.
    Checked first from memory: empty (400), not one of UPLOAD_FORMATS (415), too many
    pixels (413, from the header, before any pixel is decoded); then the bytes go to a
    file in a new private folder (mode 0700) that is removed as soon as they are decoded;
    a corrupt image is 400."""
    if not data:
        raise ApiError(400, "empty_upload", "the upload is empty: send an image file in the "
                       "form field 'file' (PNG, JPEG, TIFF, BMP or WebP)")
    try:
        with Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS) as im:
            w, h = im.size                     # turning it upright keeps w * h
    except Image.DecompressionBombError as e:
        raise ApiError(413, "too_many_pixels", f"the image is too large to decode ({e})") \
            from None
    except UnidentifiedImageError:
        raise ApiError(415, "unsupported_type", "the upload is not an image this server "
                       f"reads: expected one of {', '.join(UPLOAD_FORMATS)}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ApiError(400, "corrupt_image", f"the image could not be read ({e})") from None
    if w * h > max_pixels:
        raise ApiError(413, "too_many_pixels", f"the image has {w} x {h} = {w * h:,} pixels; "
                       f"this server's limit is {max_pixels:,}")
    with tempfile.TemporaryDirectory(prefix="dsd-serve-") as folder:
        path = os.path.join(folder, "upload")
        with open(path, "xb") as f:
            f.write(data)
        try:
            arr = load_image_file(path)
            return array_to_chw(np.asarray(arr), "the upload")
        except Image.DecompressionBombError as e:
            raise ApiError(413, "too_many_pixels", f"the image is too large to decode "
                           f"({e})") from None
        except (ImageInputError, OSError, SyntaxError, ValueError, EOFError) as e:
            # the reader's messages name the file: a server path the client has no use for
            why = str(e).replace(path, "the upload")
            raise ApiError(400, "corrupt_image", f"the image could not be decoded: {why}") \
                from None
