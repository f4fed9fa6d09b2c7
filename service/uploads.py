"""Reading ``multipart/form-data`` uploads with a hard size cap enforced while the body streams in.

Starlette's multipart parser (python-multipart underneath) does the parsing; we only feed it a stream that
stops with 413 as soon as the body exceeds the cap, so an oversized upload is never buffered, whatever its
Content-Length says (which is checked first, to refuse honest oversized uploads before reading anything).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from common.errors import BadRequestError, PayloadTooLargeError, UnprocessableError, UnsupportedMediaTypeError

FORM_OVERHEAD_BYTES = 64 * 1024  # room for the form fields and part headers on top of the image itself
MAX_FIELDS = 32
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


async def _capped(request: Request, limit: int) -> AsyncIterator[bytes]:
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit + FORM_OVERHEAD_BYTES:
            raise _too_large(limit)
        yield chunk


async def read_upload(request: Request, max_image_bytes: int) -> Upload:
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise UnsupportedMediaTypeError("send multipart/form-data with the image in a part named 'image'")
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise BadRequestError("invalid Content-Length")
        if int(length) > max_image_bytes + FORM_OVERHEAD_BYTES:
            raise _too_large(max_image_bytes)

    parser = MultiPartParser(
        request.headers,
        _capped(request, max_image_bytes),
        max_files=1,
        max_fields=MAX_FIELDS,
        max_part_size=MAX_FIELD_BYTES,
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise BadRequestError(f"malformed multipart body: {exc.message}") from exc
    try:
        image: bytes | None = None
        filename: str | None = None
        fields: dict[str, str] = {}
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name != IMAGE_FIELD:
                    raise UnprocessableError(f"unexpected file part {name!r}; send the image as 'image'")
                image = await value.read(max_image_bytes + 1)
                filename = value.filename
            elif name == IMAGE_FIELD:
                raise UnprocessableError("'image' must be a file part")
            elif name in fields:
                raise UnprocessableError(f"field {name!r} given more than once")
            elif value != "" or name in KEEP_EMPTY:
                fields[name] = value
    finally:
        await form.close()
    if image is None:
        raise UnprocessableError("missing the 'image' file part")
    if len(image) > max_image_bytes:
        raise _too_large(max_image_bytes)
    return Upload(image=image, filename=filename, fields=fields)
