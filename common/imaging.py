"""Upload validation and image decoding with Pillow only (no numpy, no torch).

Accepted formats: PNG, JPEG and WebP (static). The type is sniffed from magic bytes (the client's filename
and Content-Type are ignored) and Pillow is restricted to that one decoder, so a file cannot pose as another
format. GIF, BMP, TIFF and anything else get ``UnsupportedMediaTypeError`` (415); animated PNG/WebP are
refused rather than silently cut to their first frame (the client would get back a still it did not ask for).

Order of checks, cheapest first: size in bytes (the API caps the upload while reading), magic bytes, the
header (width x height is checked against ``max_pixels`` BEFORE any pixel is decoded: a 50000x50000 "bomb"
costs a few hundred bytes of parsing), animation, then integrity. ``probe(..., decode=False)`` (the API's
default, to keep submit latency low) checks integrity structurally without decoding pixels: PNG chunk CRCs up
to IEND, a JPEG end-of-image marker after the scan data, the WebP RIFF length; truncated uploads are refused
at submit time. ``decode=True`` and ``load_rgb`` (the worker) decode everything, so corrupt-but-complete data
is refused there with the same ``InvalidImageError``.

What the model receives is always 8-bit RGB. The conversions applied are reported (and stored in the job's
``input.conversions``) using these names:

- ``exif_transpose``: EXIF orientation != 1 was applied (reported width/height are after rotation)
- ``alpha_on_white``: RGBA / LA / PA / palette-with-transparency composited over white
- ``grayscale_to_rgb``: L / LA / 1-bit replicated to three channels
- ``palette_to_rgb``: palette (P) images expanded
- ``cmyk_to_rgb``: CMYK (e.g. print JPEGs) converted
- ``high_bit_depth_to_8bit``: 16-bit / 32-bit integer grayscale scaled to 8 bits
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from PIL import Image, ImageOps, UnidentifiedImageError

from common.errors import ImageTooLargeError, InvalidImageError, UnsupportedMediaTypeError
from common.formats import IMAGE_FORMATS

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_T = TypeVar("_T")
_PIL_FORMATS = {fmt: fmt.upper() for fmt in IMAGE_FORMATS}  # Pillow's names: PNG, JPEG, WEBP
_KNOWN_UNSUPPORTED = {
    b"GIF87a": "gif",
    b"GIF89a": "gif",
    b"BM": "bmp",
    b"II*\x00": "tiff",
    b"MM\x00*": "tiff",
}
_EXIF_ORIENTATION = 0x0112
_TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}  # these swap width and height


@dataclass(frozen=True)
class ImageInfo:
    format: str  # png | jpeg | webp
    width: int  # after EXIF orientation
    height: int
    mode: str  # Pillow mode as stored in the file
    bytes: int
    conversions: list[str] = field(default_factory=list)

    @property
    def pixels(self) -> int:
        return self.width * self.height


def sniff_format(data: bytes) -> str:
    """Format from magic bytes; raises for unknown or unsupported types."""
    if data.startswith(_PNG_SIGNATURE):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    for magic, name in _KNOWN_UNSUPPORTED.items():
        if data.startswith(magic):
            raise UnsupportedMediaTypeError(f"{name} images are not supported; send PNG, JPEG or WebP")
    raise UnsupportedMediaTypeError("not a PNG, JPEG or WebP image")


def _open(data: bytes, max_pixels: int) -> tuple[Image.Image, str]:
    if not data:
        raise InvalidImageError("the upload is empty")
    fmt = sniff_format(data)
    try:
        img = Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[fmt]])
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"header size exceeds the limit of {max_pixels} pixels") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidImageError(f"cannot read the {fmt} header: {exc}") from exc
    width, height = img.size
    if width <= 0 or height <= 0:
        raise InvalidImageError("image has no pixels")
    if width * height > max_pixels:
        raise ImageTooLargeError(f"{width}x{height} pixels exceeds the limit of {max_pixels} pixels")
    if getattr(img, "is_animated", False) or getattr(img, "n_frames", 1) > 1:
        raise InvalidImageError("animated images are not supported; send a single frame")
    return img, fmt


def _orientation(img: Image.Image) -> int:
    # Parsed from the raw EXIF block: on a PNG, Image.getexif() decodes the whole image to find late chunks.
    raw = img.info.get("exif")
    if not raw:
        return 1
    try:
        exif = Image.Exif()
        exif.load(raw)
        return int(exif.get(_EXIF_ORIENTATION, 1) or 1)
    except Exception:  # a broken EXIF block is ignored, as browsers do, rather than refusing the photo
        return 1


def _mode_conversions(img: Image.Image) -> list[str]:
    mode = img.mode
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in img.info)
    out: list[str] = []
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        out += ["high_bit_depth_to_8bit", "grayscale_to_rgb"]
    elif mode in ("L", "LA", "1"):
        out.append("grayscale_to_rgb")
    elif mode in ("P", "PA"):
        out.append("palette_to_rgb")
    elif mode == "CMYK":
        out.append("cmyk_to_rgb")
    if has_alpha:
        out.append("alpha_on_white")
    return out


def _check_structure(data: bytes, fmt: str) -> None:
    """Cheap truncation checks that read no pixels (see the module docstring)."""
    if fmt == "png":
        try:
            img = Image.open(io.BytesIO(data), formats=["PNG"])
            img.verify()  # walks every chunk up to IEND, checking CRCs; inflates nothing
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise InvalidImageError(f"corrupt or truncated png data: {exc}") from exc
    elif fmt == "jpeg":
        # 0xFFD9 cannot occur inside entropy-coded data (0xFF is byte-stuffed there), so a file truncated
        # anywhere after its scan header has no EOI after the last SOS (0xFFDA). Checked as "a scan exists
        # and none follows the last EOI": both searches stop near where the markers sit (the first SOS
        # near the start, the last EOI at the end) instead of scanning the whole file for the last SOS.
        last_eoi = data.rfind(b"\xff\xd9")
        if last_eoi < 0 or data.find(b"\xff\xda", 0, last_eoi) < 0 or data.find(b"\xff\xda", last_eoi) >= 0:
            raise InvalidImageError("truncated jpeg data: no end-of-image marker after the scan")
    elif fmt == "webp" and int.from_bytes(data[4:8], "little") + 8 > len(data):
        raise InvalidImageError("truncated webp data: shorter than its RIFF header says")


_PNG_TEXT_CHUNKS = frozenset({b"tEXt", b"zTXt", b"iTXt"})


def _text_limit_hit(exc: InvalidImageError) -> bool:
    """Pillow refused a PNG text chunk (``PngImagePlugin.MAX_TEXT_CHUNK`` / ``MAX_TEXT_MEMORY``, its guard
    against text decompression bombs), not the image: a large zTXt comment made valid photos "corrupt"."""
    return isinstance(exc.__cause__, ValueError) and "MAX_TEXT" in str(exc.__cause__)


def _without_png_text(data: bytes) -> bytes:
    """The PNG with its text chunks (tEXt, zTXt, iTXt) dropped and every other chunk kept byte for byte.

    Hand-written because Pillow's only way past its text limits is ``LOAD_TRUNCATED_IMAGES``, which would
    also accept truncated pixel data; the service never uses PNG text. Chunk CRCs are left for Pillow to
    check; a malformed tail is kept as it is, so Pillow reports it as before.
    """
    out = [data[:8]]
    pos = 8
    while pos + 12 <= len(data):
        end = pos + 12 + int.from_bytes(data[pos : pos + 4], "big")
        if end > len(data):
            break
        if data[pos + 4 : pos + 8] not in _PNG_TEXT_CHUNKS:
            out.append(data[pos:end])
        pos = end
    out.append(data[pos:])
    return b"".join(out)


def _retry_without_text(data: bytes, read: Callable[[bytes], _T]) -> _T:
    """``read(data)``, or, when only Pillow's text-chunk limits refused it, ``read`` of the PNG without
    its text chunks (so the normal path costs nothing extra)."""
    try:
        return read(data)
    except InvalidImageError as exc:
        if not (data.startswith(_PNG_SIGNATURE) and _text_limit_hit(exc)):
            raise
    return read(_without_png_text(data))


def probe(data: bytes, max_pixels: int, *, decode: bool = True) -> ImageInfo:
    """Validate an upload (header, limits, animation, integrity) and describe it; see the module docstring."""
    info = _retry_without_text(data, lambda raw: _probe(raw, max_pixels, decode))
    return dataclasses.replace(info, bytes=len(data))


def _probe(data: bytes, max_pixels: int, decode: bool) -> ImageInfo:
    img, fmt = _open(data, max_pixels)
    orientation = _orientation(img)
    conversions = (["exif_transpose"] if orientation != 1 else []) + _mode_conversions(img)
    width, height = img.size
    if orientation in _TRANSPOSING_ORIENTATIONS:
        width, height = height, width
    mode = img.mode
    _check_structure(data, fmt)
    if decode:
        try:
            img.load()  # truncated/corrupt data raises here (Pillow's LOAD_TRUNCATED_IMAGES stays False)
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise InvalidImageError(f"corrupt or truncated {fmt} data: {exc}") from exc
    return ImageInfo(fmt, width, height, mode, len(data), conversions)


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB following the documented conversion list (alpha composited on white)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        img = img.convert("I").point(lambda v: v * (1 / 257)).convert("L")  # 0..65535 -> 0..255
    elif img.mode == "F":
        img = img.point(lambda v: v * 255).convert("L")  # float images are 0..1 by convention
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("LA", "PA", "La", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img, mask=img.getchannel("A"))
        return background
    return img if img.mode == "RGB" else img.convert("RGB")


def load_rgb(data: bytes, max_pixels: int) -> Image.Image:
    """Decode an upload into the 8-bit RGB image the model restores (EXIF orientation applied)."""
    return _retry_without_text(data, lambda raw: _load_rgb(raw, max_pixels))


def _load_rgb(data: bytes, max_pixels: int) -> Image.Image:
    img, fmt = _open(data, max_pixels)
    try:
        img.load()
        img = ImageOps.exif_transpose(img) or img
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidImageError(f"corrupt or truncated {fmt} data: {exc}") from exc
    return to_rgb(img)


def encode(img: Image.Image, fmt: str) -> bytes:
    """Encode a result: lossless PNG, or high-quality JPEG / WebP (no chroma subsampling)."""
    buf = io.BytesIO()
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    if fmt == "png":
        rgb.save(buf, "PNG", compress_level=6)
    elif fmt == "jpeg":
        rgb.save(buf, "JPEG", quality=95, subsampling=0, optimize=True)
    elif fmt == "webp":
        rgb.save(buf, "WEBP", quality=95, method=4)
    else:
        raise ValueError(f"unsupported output format {fmt!r}")
    return buf.getvalue()
