"""Thumbnails of uploaded images, made with Pillow, safe to show to anyone.

Input is the whole image as ``bytes``, at most :data:`MAX_IMAGE_BYTES` (the caller reads
the blob into memory only up to that bound, so a thumbnail never streams from storage
while a decoder waits). Only JPEG, PNG, GIF and WebP are decoded (:data:`IMAGE_TYPES`,
judged from the bytes by :func:`file_service.sniff.sniff`); anything else — SVG included,
which is markup, not pixels — has no thumbnail (``None``).

Invariants of a thumbnail:

* **No metadata.** EXIF (GPS positions, camera serial numbers), XMP, ICC profiles and text
  chunks of the original are dropped: the output is built from the pixels alone. The EXIF
  orientation is applied first, so the thumbnail is the right way up without it.
* **Bounded.** Its longer side is at most ``max_side`` pixels (an image already smaller is
  not enlarged). It is always WebP (``image/webp``), lossy, with an alpha channel when the
  original has transparency: one format every current browser shows, smaller than JPEG or
  PNG, so there is no per-image choice of format to get wrong.
* **No image bombs.** The pixel count the header declares is checked against
  ``max_pixels`` before any pixel is decoded (Pillow's ``Image.open`` reads only the
  header), and Pillow's own decompression-bomb error or warning is a refusal too. JPEGs
  are decoded at a reduced scale (``draft``), so a large photo costs a fraction of its
  full decode. The worst case is one ``max_pixels`` image decoded at full size (about
  4 bytes a pixel) per thumbnail being made.

An image that is too large, too big in bytes, corrupt or truncated raises
:class:`ImageRefused`. :func:`thumbnail` runs the CPU work in a thread so an event loop
is never blocked by a decoder.
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass
from typing import Final

from PIL import Image, ImageOps

from file_service.models import OCTET_STREAM
from file_service.sniff import HEAD_BYTES, sniff
from service_kit.errors import InvalidArgument

#: The most bytes of image :func:`make_thumbnail` accepts.
MAX_IMAGE_BYTES: Final = 50 * 1024 * 1024
#: The default bound on the pixels an image may declare (40 megapixels).
MAX_PIXELS: Final = 40_000_000
#: The default longest side of a thumbnail, in pixels.
THUMBNAIL_SIDE: Final = 256
THUMBNAIL_TYPE: Final = "image/webp"
#: The types thumbnails are made of, and the Pillow decoder each may use (no other).
IMAGE_TYPES: Final = {
    "image/jpeg": "JPEG",
    "image/png": "PNG",
    "image/gif": "GIF",
    "image/webp": "WEBP",
}
_WEBP_QUALITY: Final = 80


class ImageRefused(InvalidArgument):
    """An image Keel will not decode (INVALID_ARGUMENT for a caller that reports it):
    too many pixels or bytes, corrupt or truncated. ``reason`` says which, for people."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"the image is refused: {reason}")


@dataclass(frozen=True, slots=True)
class ThumbnailImage:
    """A thumbnail: its encoded bytes, their media type, and its size in pixels."""

    data: bytes
    content_type: str
    width: int
    height: int


def make_thumbnail(
    data: bytes, *, max_side: int = THUMBNAIL_SIDE, max_pixels: int = MAX_PIXELS
) -> ThumbnailImage | None:
    """The thumbnail of the image ``data``, its longer side at most ``max_side``; None when
    ``data`` is not a JPEG, PNG, GIF or WebP. Raises :class:`ImageRefused` when the image
    has more than ``max_pixels`` pixels or ``data`` more than :data:`MAX_IMAGE_BYTES`
    bytes, or when it cannot be decoded. CPU-bound: see :func:`thumbnail`."""
    if max_side < 1 or max_pixels < 1:
        raise ValueError("max_side and max_pixels must be positive")
    decoder = IMAGE_TYPES.get(sniff(data[:HEAD_BYTES], OCTET_STREAM, ""))
    if decoder is None:
        return None
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageRefused(f"larger than {MAX_IMAGE_BYTES} bytes")
    try:
        with Image.open(io.BytesIO(data), formats=[decoder]) as image:
            _check_pixels(image.size, max_pixels)
            return _render(image, max_side)
    except ImageRefused:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRefused(f"more than {max_pixels} pixels") from exc
    # A decoder of untrusted bytes fails in many ways (OSError for truncated data,
    # SyntaxError, ValueError, struct.error, …); each of them means this image is refused.
    except Exception as exc:
        raise ImageRefused(f"cannot be decoded ({type(exc).__name__})") from exc


def is_image_type(content_type: str) -> bool:
    """Whether files of ``content_type`` (as :func:`file_service.sniff.sniff` gives it)
    get thumbnails: JPEG, PNG, GIF and WebP."""
    return content_type.partition(";")[0].strip().lower() in IMAGE_TYPES


async def thumbnail(
    data: bytes, *, max_side: int = THUMBNAIL_SIDE, max_pixels: int = MAX_PIXELS
) -> ThumbnailImage | None:
    """:func:`make_thumbnail` in a worker thread, so the event loop keeps running."""
    return await asyncio.to_thread(make_thumbnail, data, max_side=max_side, max_pixels=max_pixels)


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    """Refuse an image whose header declares more than ``max_pixels`` pixels."""
    width, height = size
    if width * height > max_pixels:
        raise ImageRefused(f"{width}x{height} is more than {max_pixels} pixels")


def _render(image: Image.Image, max_side: int) -> ThumbnailImage:
    """Decode ``image`` (cheaply where the format allows), shrink it, turn it the right
    way up, and encode its pixels alone as WebP."""
    if image.format == "JPEG":
        image.draft("RGB", (max_side, max_side))
    image.load()
    has_alpha = image.has_transparency_data
    mode = "RGBA" if has_alpha else "RGB"
    # Palette and bilevel images resample badly (nearest neighbour only): widen them
    # first. Other modes are shrunk first, so the full-size copy is never made.
    if image.mode not in ("RGB", "RGBA", "L", "LA"):
        image = image.convert(mode)
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    upright = ImageOps.exif_transpose(image)
    # A new image from the raw pixels carries nothing of the original's info (EXIF, XMP,
    # ICC profile, text chunks), so nothing can leak through an encoder's defaults.
    pixels = upright.convert(mode)
    clean = Image.frombytes(mode, pixels.size, pixels.tobytes())
    output = io.BytesIO()
    clean.save(output, "WEBP", quality=_WEBP_QUALITY, exif=b"", xmp=b"", icc_profile=None)
    return ThumbnailImage(output.getvalue(), THUMBNAIL_TYPE, clean.width, clean.height)
