"""Thumbnails: no metadata survives (GPS above all), the orientation is applied, the size
is bounded, image bombs and corrupt images are refused, other files have none."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import ExifTags, Image, ImageCms

from file_service.images import (
    MAX_IMAGE_BYTES,
    ImageRefused,
    ThumbnailImage,
    is_image_type,
    make_thumbnail,
    thumbnail,
)

CAMERA = "KeelCam-Serial-0042"
XMP = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description>where-i-live</rdf:Description>'


def _photo(size: tuple[int, int], *, orientation: int = 1) -> bytes:
    """A JPEG as a phone writes it: EXIF with GPS, an orientation, XMP and an ICC profile.
    Its left half is red and its right half blue, as stored."""
    image = Image.new("RGB", size, (220, 20, 20))
    image.paste((20, 20, 220), (size[0] // 2, 0, size[0], size[1]))
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    exif[ExifTags.Base.Make] = CAMERA
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps.update({1: "N", 2: (52.0, 22.0, 3.5), 3: "E", 4: (4.0, 53.0, 1.25)})
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif, icc_profile=icc, xmp=XMP)
    return buffer.getvalue()


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _png_declaring(width: int, height: int, *, with_pixels: bool, idat: bytes = b"") -> bytes:
    """A PNG whose header declares ``width`` by ``height`` bilevel pixels; with a tiny IDAT
    (far too little data for that size) or none at all — bytes cheap to make and to send."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    pixels = chunk(b"IDAT", idat or zlib.compress(b"\x00" * 1024)) if with_pixels else b""
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + pixels + chunk(b"IEND", b"")


def _opened(thumb: ThumbnailImage) -> Image.Image:
    image = Image.open(io.BytesIO(thumb.data))
    image.load()
    return image


def test_a_photo_s_thumbnail_keeps_no_metadata_at_all() -> None:
    thumb = make_thumbnail(_photo((1200, 900)))

    assert thumb is not None
    image = _opened(thumb)
    assert not image.getexif()
    assert not image.getexif().get_ifd(ExifTags.IFD.GPSInfo)
    assert "icc_profile" not in image.info
    assert "xmp" not in image.info
    for trace in (b"Exif", b"GPS", CAMERA.encode(), b"xmpmeta", b"where-i-live", b"ICCP"):
        assert trace not in thumb.data


def test_the_exif_orientation_is_applied() -> None:
    # Orientation 6: the stored image is shown turned 90° clockwise, so the left (red)
    # half ends on top and the wide photo becomes tall.
    thumb = make_thumbnail(_photo((400, 200), orientation=6))

    assert thumb is not None
    assert (thumb.width, thumb.height) == (128, 256)
    image = _opened(thumb).convert("RGB")
    top, bottom = image.getpixel((64, 40)), image.getpixel((64, 216))
    assert isinstance(top, tuple) and isinstance(bottom, tuple)
    assert top[0] > 150 and top[2] < 100
    assert bottom[2] > 150 and bottom[0] < 100


@pytest.mark.parametrize(
    ("size", "expected"),
    [((1000, 600), (256, 154)), ((300, 2000), (38, 256)), ((64, 48), (64, 48))],
)
def test_the_longer_side_is_at_most_256_and_small_images_are_not_enlarged(
    size: tuple[int, int], expected: tuple[int, int]
) -> None:
    thumb = make_thumbnail(_png(Image.new("RGB", size, "green")))

    assert thumb is not None
    assert thumb.content_type == "image/webp"
    assert (thumb.width, thumb.height) == expected == _opened(thumb).size


def test_max_side_bounds_the_thumbnail() -> None:
    thumb = make_thumbnail(_photo((800, 600)), max_side=64)
    assert thumb is not None
    assert (thumb.width, thumb.height) == (64, 48)


@pytest.mark.parametrize("format_name", ["PNG", "GIF", "WEBP"])
def test_transparency_is_kept(format_name: str) -> None:
    original = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    original.paste((10, 200, 10, 255), (0, 0, 150, 300))
    buffer = io.BytesIO()
    original.save(buffer, format_name)

    thumb = make_thumbnail(buffer.getvalue())

    assert thumb is not None
    image = _opened(thumb)
    assert image.mode == "RGBA"
    alpha_left, alpha_right = image.getpixel((10, 128)), image.getpixel((250, 128))
    assert isinstance(alpha_left, tuple) and isinstance(alpha_right, tuple)
    assert alpha_left[3] > 200 and alpha_right[3] < 50


def test_a_palette_and_a_greyscale_image_get_thumbnails() -> None:
    for image in (Image.new("P", (500, 500), 3), Image.new("L", (500, 500), 128)):
        thumb = make_thumbnail(_png(image))
        assert thumb is not None
        assert (thumb.width, thumb.height) == (256, 256)


def test_an_image_bomb_beyond_pillow_s_own_limit_is_refused() -> None:
    bomb = _png_declaring(100_000, 100_000, with_pixels=True)
    assert len(bomb) < 200

    with pytest.raises(ImageRefused, match="pixels"):
        make_thumbnail(bomb)


def test_pixels_are_counted_from_the_header_before_anything_is_decoded() -> None:
    # 64 megapixels, within Pillow's own limit but over ours. The file has no pixel data
    # at all: decoding would fail as corrupt, so a refusal for the pixel count shows the
    # count was checked first.
    header_only = _png_declaring(8000, 8000, with_pixels=False)

    with pytest.raises(ImageRefused) as refused:
        make_thumbnail(header_only)
    assert refused.value.reason == "8000x8000 is more than 40000000 pixels"
    with pytest.raises(ImageRefused, match="more than 1000 pixels"):
        make_thumbnail(_png(Image.new("RGB", (40, 30))), max_pixels=1000)


@pytest.mark.parametrize(
    "corrupt",
    [
        _png(Image.new("RGB", (300, 300), "red"))[:120],
        _png_declaring(500, 500, with_pixels=True, idat=b"not zlib at all"),
        b"\xff\xd8\xff\xe0" + b"\x00\x10JFIF\x00" + b"\x13" * 400,
        b"GIF89a" + b"\xff" * 64,
    ],
    ids=["truncated png", "png with broken pixel data", "jpeg garbage", "gif garbage"],
)
def test_a_corrupt_image_is_refused(corrupt: bytes) -> None:
    with pytest.raises(ImageRefused, match="cannot be decoded"):
        make_thumbnail(corrupt)


def test_an_image_over_the_byte_limit_is_refused() -> None:
    oversized = _png(Image.new("RGB", (8, 8))) + b"\x00" * MAX_IMAGE_BYTES
    with pytest.raises(ImageRefused, match="larger than"):
        make_thumbnail(oversized)


@pytest.mark.parametrize(
    "not_an_image",
    [
        b"just some notes\n",
        b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n",
        b'<svg xmlns="http://www.w3.org/2000/svg"><rect width="9" height="9"/></svg>',
        b"",
    ],
    ids=["text", "pdf", "svg", "empty"],
)
def test_a_file_that_is_not_an_image_has_no_thumbnail(not_an_image: bytes) -> None:
    assert make_thumbnail(not_an_image) is None


def test_the_types_with_thumbnails_are_jpeg_png_gif_and_webp() -> None:
    for image_type in ("image/jpeg", "image/png", "image/gif", "Image/WebP"):
        assert is_image_type(image_type)
    for other in ("image/svg+xml", "image/tiff", "application/pdf", "text/html", ""):
        assert not is_image_type(other)


async def test_the_async_wrapper_makes_the_same_thumbnail() -> None:
    photo = _photo((640, 480))
    thumb = await thumbnail(photo, max_side=100)

    assert thumb is not None
    assert (thumb.width, thumb.height) == (100, 75)
    assert await thumbnail(b"not an image") is None
    with pytest.raises(ImageRefused):
        await thumbnail(_png_declaring(100_000, 100_000, with_pixels=True))
