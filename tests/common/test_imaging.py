from __future__ import annotations

import pytest
from PIL import Image

from common import imaging
from common.errors import ImageTooLargeError, InvalidImageError, UnsupportedMediaTypeError
from tests.common import images

LIMIT = 4096 * 4096


@pytest.mark.parametrize(
    ("data", "fmt"), [(images.png(), "png"), (images.jpeg(), "jpeg"), (images.webp(), "webp")]
)
def test_probe_accepts_supported_formats(data: bytes, fmt: str) -> None:
    info = imaging.probe(data, LIMIT)
    assert (info.format, info.width, info.height, info.conversions) == (fmt, 32, 24, [])
    assert info.bytes == len(data)


@pytest.mark.parametrize(
    "data",
    [
        images.animated_gif(),
        images.encode(images.rgb(), "BMP"),
        images.encode(images.rgb(), "TIFF"),
        b"hello",
    ],
)
def test_unsupported_types_are_415(data: bytes) -> None:
    with pytest.raises(UnsupportedMediaTypeError):
        imaging.probe(data, LIMIT)


def test_empty_upload_refused() -> None:
    with pytest.raises(InvalidImageError, match="empty"):
        imaging.probe(b"", LIMIT)


JPEG64 = images.jpeg(64, 64)
TRUNCATED = [
    images.png(64, 64)[:-40],
    JPEG64[:200],
    JPEG64[: len(JPEG64) - 30],
    JPEG64[: JPEG64.find(b"\xff\xda")],  # headers only, no scan
    images.webp(64, 64)[:40],
    images.webp(64, 64)[:-3],
]


@pytest.mark.parametrize("decode", [True, False])
@pytest.mark.parametrize("data", TRUNCATED)
def test_truncated_refused(data: bytes, decode: bool) -> None:
    with pytest.raises(InvalidImageError):
        imaging.probe(data, LIMIT, decode=decode)


def test_structural_check_accepts_trailing_bytes_after_jpeg_eoi() -> None:
    assert imaging.probe(JPEG64 + b"\x00" * 16, LIMIT, decode=False).format == "jpeg"


def test_corrupt_but_complete_png_needs_full_decode() -> None:
    """Documented limit of decode=False: valid chunk CRCs around a bad deflate stream pass; the worker's
    load_rgb (and decode=True) refuse it."""
    import struct
    import zlib

    raw = images.png(8, 8)
    start = raw.find(b"IDAT") - 4
    length = struct.unpack(">I", raw[start : start + 4])[0]
    bad = b"\x00" * length
    chunk = struct.pack(">I", length) + b"IDAT" + bad + struct.pack(">I", zlib.crc32(b"IDAT" + bad))
    data = raw[:start] + chunk + raw[start + 12 + length :]
    assert imaging.probe(data, LIMIT, decode=False).width == 8
    with pytest.raises(InvalidImageError):
        imaging.probe(data, LIMIT, decode=True)
    with pytest.raises(InvalidImageError):
        imaging.load_rgb(data, LIMIT)


def test_header_bomb_refused_before_decoding() -> None:
    with pytest.raises(ImageTooLargeError, match="exceeds the limit"):
        imaging.probe(images.png_header_bomb(), LIMIT)


def test_pixel_limit() -> None:
    imaging.probe(images.png(10, 10), 100)
    with pytest.raises(ImageTooLargeError):
        imaging.probe(images.png(10, 11), 100)


@pytest.mark.parametrize("data", [images.animated_webp(), images.animated_png()])
def test_animated_refused(data: bytes) -> None:
    with pytest.raises(InvalidImageError, match="animated"):
        imaging.probe(data, LIMIT)


def test_exif_orientation_reported_and_applied() -> None:
    data = images.exif_rotated_jpeg(40, 20, orientation=6)
    info = imaging.probe(data, LIMIT)
    assert (info.width, info.height) == (20, 40)
    assert info.conversions == ["exif_transpose"]
    assert imaging.load_rgb(data, LIMIT).size == (20, 40)


def test_huge_exif_is_accepted() -> None:
    info = imaging.probe(images.huge_exif_jpeg(), LIMIT)
    assert (info.width, info.height, info.conversions) == (16, 16, [])


def test_rgba_composited_on_white() -> None:
    data = images.rgba_png(alpha=0)
    assert imaging.probe(data, LIMIT).conversions == ["alpha_on_white"]
    img = imaging.load_rgb(data, LIMIT)
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (255, 255, 255)


def test_16bit_png_scaled_to_8bit() -> None:
    data = images.png16_gray(value=65535)
    info = imaging.probe(data, LIMIT)
    assert info.conversions == ["high_bit_depth_to_8bit", "grayscale_to_rgb"]
    assert imaging.load_rgb(data, LIMIT).getpixel((0, 0)) == (255, 255, 255)
    assert imaging.load_rgb(images.png16_gray(value=257 * 100), LIMIT).getpixel((0, 0)) == (100, 100, 100)


def test_cmyk_jpeg_converted() -> None:
    data = images.cmyk_jpeg()
    assert imaging.probe(data, LIMIT).conversions == ["cmyk_to_rgb"]
    r, g, b = imaging.load_rgb(data, LIMIT).getpixel((4, 4))
    assert r > 200 and g < 60 and b < 60


def test_palette_and_gray() -> None:
    assert imaging.probe(images.encode(images.rgb().convert("P"), "PNG"), LIMIT).conversions == [
        "palette_to_rgb"
    ]
    assert imaging.probe(images.encode(images.rgb().convert("L"), "PNG"), LIMIT).conversions == [
        "grayscale_to_rgb"
    ]


def test_one_pixel() -> None:
    info = imaging.probe(images.png(1, 1), LIMIT)
    assert (info.width, info.height) == (1, 1)


@pytest.mark.parametrize(("fmt", "pil"), [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
def test_encode_round_trip(fmt: str, pil: str) -> None:
    data = imaging.encode(images.rgb(20, 10), fmt)
    assert imaging.sniff_format(data) == fmt
    with Image.open(__import__("io").BytesIO(data)) as img:
        assert img.format == pil and img.size == (20, 10)
