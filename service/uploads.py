"""Reading ``multipart/form-data`` uploads with a hard size cap enforced while the body streams in.

python-multipart's ``MultipartParser`` does the parsing. It is driven directly rather than through Starlette's
``MultiPartParser`` because the latter spools file parts through an async temporary file (an await, and
past 1 MiB a thread-pool hop, per network chunk); profiled, that was the largest API-side cost of a
submission after Celery. Here the body is collected in big blocks (at most ``FEED_BYTES`` buffered before
it is fed to the parser) and part data is kept as slices. The cap is unchanged: the stream stops with 413
as soon as the body exceeds it, whatever Content-Length says (which is checked first, to refuse honest
oversized uploads before reading anything).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from common.errors import (
    BadRequestError,
    PayloadTooLargeError,
    RequestTimeoutError,
    UnprocessableError,
    UnsupportedMediaTypeError,
)
from common.params import RestoreParams

FORM_OVERHEAD_BYTES = 64 * 1024  # room for the form fields and part headers on top of the image itself
FEED_BYTES = 1024 * 1024  # network chunks are batched up to this before parsing (fewer parser calls)
MAX_FILES = 1
# Every request field once, plus a few spare for clients that send extra (ignored) ones; a bound so a body of
# thousands of tiny parts cannot make the parser work unboundedly.
MAX_FIELDS = len(RestoreParams.model_fields) + 8
MAX_FIELD_BYTES = 4096
IMAGE_FIELD = "image"
KEEP_EMPTY = frozenset({"prompt", "negative_prompt"})


@dataclass(frozen=True)
class Upload:
    image: bytes
    filename: str | None
    fields: dict[str, str]


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"the image must be at most {limit} bytes")


def _malformed(message: str) -> BadRequestError:
    return BadRequestError(f"malformed multipart body: {message}")


def _decode(raw: bytes, charset: str) -> str:
    try:
        return raw.decode(charset)
    except (UnicodeDecodeError, LookupError):  # as browsers and Starlette do: never refuse a bad filename
        return raw.decode("latin-1")


@dataclass
class _Part:
    disposition: bytes = b""
    name: str = ""
    filename: str | None = None
    chunks: list[bytes | memoryview] = field(default_factory=list)
    size: int = 0


class _FormCollector:
    """python-multipart callbacks that collect parts in memory, enforcing the part-count and field limits."""

    def __init__(self, charset: str):
        self.charset = charset
        self.parts: list[_Part] = []
        self.files = 0
        self.fields = 0
        self._part = _Part()
        self._header_name = b""
        self._header_value = b""
        self.complete = False  # the closing boundary arrived

    def callbacks(self) -> dict[str, object]:
        return {
            "on_end": self.on_end,
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
        }

    def on_end(self) -> None:
        self.complete = True

    def on_part_begin(self) -> None:
        self._part = _Part()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        part.size += end - start
        if part.filename is None and part.size > MAX_FIELD_BYTES:
            raise _malformed(f"a form field exceeds {MAX_FIELD_BYTES} bytes")
        # A view, not a slice: the image bytes are copied once, by the join in read_upload.
        part.chunks.append(memoryview(data)[start:end])

    def on_part_end(self) -> None:
        self.parts.append(self._part)

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._part.disposition = self._header_value
        self._header_name = self._header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._part.disposition)
        if b"name" not in options:
            raise _malformed('the Content-Disposition header field "name" must be provided')
        self._part.name = _decode(options[b"name"], self.charset)
        if b"filename" in options:
            self.files += 1
            if self.files > MAX_FILES:
                raise _malformed(f"too many files (at most {MAX_FILES})")
            self._part.filename = _decode(options[b"filename"], self.charset)
        else:
            self.fields += 1
            if self.fields > MAX_FIELDS:
                raise _malformed(f"too many fields (at most {MAX_FIELDS})")


async def _blocks(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The body in blocks of up to ``FEED_BYTES``, stopping with 413 once it exceeds ``limit``."""
    total = 0
    pending: list[bytes] = []
    pending_bytes = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit + FORM_OVERHEAD_BYTES:
            raise _too_large(limit)
        pending.append(chunk)
        pending_bytes += len(chunk)
        if pending_bytes >= FEED_BYTES:
            yield b"".join(pending)
            pending, pending_bytes = [], 0
    if pending:
        yield b"".join(pending)


async def read_capped_body(request: Request, limit: int, timeout_s: float | None) -> bytes:
    """The whole body (a JSON submission): 413 past ``limit`` bytes, 408 past ``timeout_s``."""
    length = request.headers.get("content-length")
    if length is not None:
        if not (length.isascii() and length.isdigit()):
            raise BadRequestError("invalid Content-Length")
        if int(length) > limit:
            raise PayloadTooLargeError(f"the body must be at most {limit} bytes")
    try:
        async with asyncio.timeout(timeout_s):
            return b"".join([block async for block in _blocks(request, limit - FORM_OVERHEAD_BYTES)])
    except TimeoutError:
        raise RequestTimeoutError(f"the body did not arrive within {timeout_s:g}s") from None


async def _parse(request: Request, content_type: str, max_image_bytes: int) -> _FormCollector:
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise _malformed("missing boundary in multipart")
    charset = options.get(b"charset", b"utf-8").decode("latin-1")
    collector = _FormCollector(charset)
    parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
    try:
        async for block in _blocks(request, max_image_bytes):
            parser.write(block)
        parser.finalize()
    except FormParserError as exc:
        raise _malformed("invalid multipart data") from exc
    if not collector.complete:  # e.g. a connection cut inside the image part: not a missing image (422)
        raise _malformed("the body ended before the closing boundary")
    return collector


async def read_upload(request: Request, max_image_bytes: int, timeout_s: float | None = None) -> Upload:
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise UnsupportedMediaTypeError("send multipart/form-data with the image in a part named 'image'")
    length = request.headers.get("content-length")
    if length is not None:
        if not (length.isascii() and length.isdigit()):  # str.isdigit() also accepts e.g. "²"
            raise BadRequestError("invalid Content-Length")
        if int(length) > max_image_bytes + FORM_OVERHEAD_BYTES:
            raise _too_large(max_image_bytes)

    try:
        async with asyncio.timeout(timeout_s):
            form = await _parse(request, content_type, max_image_bytes)
    except TimeoutError:
        raise RequestTimeoutError(f"the upload did not arrive within {timeout_s:g}s") from None
    image: bytes | None = None
    filename: str | None = None
    fields: dict[str, str] = {}
    for part in form.parts:
        if part.filename is not None:
            if part.name != IMAGE_FIELD:
                raise UnprocessableError(f"unexpected file part {part.name!r}; send the image as 'image'")
            image = b"".join(part.chunks)
            filename = part.filename
        elif part.name == IMAGE_FIELD:
            raise UnprocessableError("'image' must be a file part")
        elif part.name in fields:
            raise UnprocessableError(f"field {part.name!r} given more than once")
        else:
            value = _decode(b"".join(part.chunks), form.charset)
            if value != "" or part.name in KEEP_EMPTY:
                fields[part.name] = value
    if image is None:
        raise UnprocessableError("missing the 'image' file part")
    if len(image) > max_image_bytes:
        raise _too_large(max_image_bytes)
    return Upload(image=image, filename=filename, fields=fields)
