"""JSON submissions: ``{"image": "https://..." | "data:image/...;base64,...", <parameters>}``.

An image URL is downloaded by the API through the webhooks' SSRF guard (``common.webhooks``: public
addresses only unless allow-listed, the connection pinned to the vetted address so a DNS answer cannot change
in between), https only unless ``image_fetch_allow_http`` (tests), no redirects, capped at
``max_upload_bytes`` while it streams, within ``image_fetch_timeout_s`` in all, and its first bytes sniffed
so a non-image stops the download at once. The name is resolved on the API's DNS threads, never on the event
loop. The bytes then go through the same checks as an upload, so both paths answer with the same codes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import json
import re
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import Request

from common import imaging
from common.errors import BadRequestError, PayloadTooLargeError, UnprocessableError
from common.webhooks import WebhookURLError, _pinned_request, check_callback_url
from service.app_state import Services
from service.schemas import IMAGE_FIELD
from service.uploads import FORM_OVERHEAD_BYTES, read_capped_body

_DATA_URI = re.compile(r"data:(?P<type>[\w.+/-]*)(?P<params>(;[\w.+-]+=[\w.+-]+)*);base64,", re.IGNORECASE)
SNIFF_BYTES = 12  # enough for every signature imaging.sniff_format knows
_OFF_LOOP_BYTES = 1 << 20  # bodies above this are parsed / decoded on a thread, not on the event loop


@dataclass(frozen=True)
class JsonSubmission:
    image: bytes
    fields: dict[str, Any]  # the parameters, validated by RestoreParams like the form's


def _image_error(message: str) -> UnprocessableError:
    return UnprocessableError(message, errors=[{"loc": [IMAGE_FIELD], "msg": message}])


def max_json_body_bytes(max_image_bytes: int) -> int:
    """A data URI of the largest image (base64: 4 characters per 3 bytes) plus the parameters."""
    return (max_image_bytes + 2) // 3 * 4 + FORM_OVERHEAD_BYTES


async def _off_loop_if_large(size: int, fn: Any, *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args) if size > _OFF_LOOP_BYTES else fn(*args)


async def read_json_submission(request: Request, services: Services) -> JsonSubmission:
    settings = services.settings
    limit = max_json_body_bytes(settings.max_upload_bytes)
    raw = await read_capped_body(request, limit, settings.upload_timeout_s)
    try:
        doc = await _off_loop_if_large(len(raw), json.loads, raw)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError both are
        raise BadRequestError(f"the body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise UnprocessableError(
            "the JSON body must be an object", errors=[{"loc": [], "msg": "not an object"}]
        )
    image = doc.pop(IMAGE_FIELD, None)
    if not isinstance(image, str) or not image:
        raise _image_error("'image' must be an https URL or a data:image/...;base64 URI")
    if image[:5].lower() == "data:":
        data = await decode_data_uri(image, settings.max_upload_bytes)
    else:
        data = await fetch_image(services, image)
    return JsonSubmission(image=data, fields=doc)


async def decode_data_uri(uri: str, max_image_bytes: int) -> bytes:
    """The bytes of a ``data:[<type>][;k=v]*;base64,<data>`` URI. The declared type is not trusted: the
    bytes are sniffed like an upload's."""
    header = _DATA_URI.match(uri)
    if header is None:
        raise _image_error("a data URI image must be data:image/<type>;base64,<data>")
    payload = uri[header.end() :]
    if len(payload) > max_json_body_bytes(max_image_bytes):
        raise PayloadTooLargeError(f"the image must be at most {max_image_bytes} bytes")
    try:
        data: bytes = await _off_loop_if_large(
            len(payload), functools.partial(base64.b64decode, validate=True), payload
        )
    except (binascii.Error, ValueError) as exc:
        raise _image_error(f"the data URI is not valid base64: {exc}") from None
    if len(data) > max_image_bytes:
        raise PayloadTooLargeError(f"the image must be at most {max_image_bytes} bytes")
    return data


async def fetch_image(services: Services, url: str) -> bytes:
    """Download an image URL (see the module docstring); errors are 422 (bad URL or answer), 413 or 415."""
    settings = services.settings
    schemes = ("https", "http") if settings.image_fetch_allow_http else ("https",)
    check = functools.partial(
        check_callback_url,
        url,
        settings.image_fetch_allow_hosts,
        resolver=services.resolver,
        field=IMAGE_FIELD,
        schemes=schemes,
    )
    timeout_s = settings.image_fetch_timeout_s
    try:
        async with asyncio.timeout(timeout_s):
            checked = await services.off_loop_dns(check)
            assert checked is not None  # resolve=True always returns the vetted address
            target, headers, extensions = _pinned_request(checked)
            headers["Accept"] = "image/png, image/jpeg, image/webp"
            headers["Accept-Encoding"] = "identity"  # the cap counts the bytes as they come: no zip bombs
            return await _download(services.http, target, headers, extensions, settings.max_upload_bytes)
    except WebhookURLError as exc:
        raise _image_error(str(exc)) from None
    except TimeoutError:
        raise _image_error(f"the image URL did not answer within {timeout_s:g}s") from None
    except httpx.HTTPError as exc:
        raise _image_error(f"the image URL could not be fetched: {type(exc).__name__}") from None


async def _download(
    http: httpx.AsyncClient, target: str, headers: dict[str, str], extensions: dict[str, Any], limit: int
) -> bytes:
    request = http.build_request("GET", target, headers=headers, extensions=extensions)
    response = await http.send(request, stream=True, follow_redirects=False)
    try:
        if response.status_code != 200:
            raise _image_error(
                f"the image URL answered HTTP {response.status_code} (redirects are not followed)"
            )
        if response.headers.get("content-encoding", "identity").lower() != "identity":
            raise _image_error("the image URL answered with a compressed encoding; serve the file as it is")
        length = response.headers.get("content-length", "")
        if length.isascii() and length.isdigit() and int(length) > limit:
            raise PayloadTooLargeError(f"the image must be at most {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        sniffed = False
        async for chunk in response.aiter_raw():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLargeError(f"the image must be at most {limit} bytes")
            chunks.append(chunk)
            if not sniffed and size >= SNIFF_BYTES:
                imaging.sniff_format(b"".join(chunks))  # 415 before downloading the rest of a non-image
                sniffed = True
        return b"".join(chunks)
    finally:
        await response.aclose()
