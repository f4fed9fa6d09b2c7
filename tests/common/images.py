"""Small image factories shared by the common and service tests (tiny sizes keep tests fast)."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def rgb(width: int = 32, height: int = 24, color: tuple[int, int, int] = (200, 100, 50)) -> Image.Image:
    return Image.new("RGB", (width, height), color)


def png(width: int = 32, height: int = 24) -> bytes:
    return encode(rgb(width, height), "PNG")


def jpeg(width: int = 32, height: int = 24, **kwargs: object) -> bytes:
    return encode(rgb(width, height), "JPEG", **kwargs)


def webp(width: int = 32, height: int = 24) -> bytes:
    return encode(rgb(width, height), "WEBP")


def png_header_bomb(width: int = 50000, height: int = 50000) -> bytes:
    """A valid PNG signature + IHDR declaring a huge image, with a tiny (incomplete) IDAT: decoding it would
    allocate width*height pixels, so it must be refused from the header alone."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def exif_rotated_jpeg(width: int = 40, height: int = 20, orientation: int = 6) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(rgb(width, height), "JPEG", exif=exif.tobytes())


def huge_exif_jpeg(exif_bytes: int = 60000) -> bytes:
    exif = Image.Exif()
    exif[0x010E] = "x" * exif_bytes  # ImageDescription: one huge ASCII tag
    exif[0x0112] = 1
    return encode(rgb(16, 16), "JPEG", exif=exif.tobytes())


def animated_gif() -> bytes:
    frames = [rgb(8, 8, (i * 40, 0, 0)).convert("P") for i in range(3)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def animated_webp() -> bytes:
    frames = [rgb(8, 8, (i * 40, 0, 0)) for i in range(3)]
    return encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=50, lossless=True)


def animated_png() -> bytes:
    frames = [rgb(8, 8, (i * 40, 0, 0)) for i in range(3)]
    return encode(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=50)


def png16_gray(width: int = 8, height: int = 8, value: int = 65535) -> bytes:
    return encode(Image.new("I;16", (width, height), value), "PNG")


def cmyk_jpeg() -> bytes:
    return encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG")  # pure red in CMYK


def rgba_png(alpha: int = 0) -> bytes:
    return encode(Image.new("RGBA", (8, 8), (10, 20, 30, alpha)), "PNG")
