"""Hostile and odd inputs at the API level: each must be a clear 4xx or a documented conversion."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.common import images

PNG = images.png(64, 64)
JPEG = images.jpeg(64, 64)

REFUSED = [
    ("truncated_png", PNG[: len(PNG) // 2], 422, "invalid_image"),
    ("truncated_jpeg", JPEG[: len(JPEG) // 2], 422, "invalid_image"),
    ("zero_bytes", b"", 422, "invalid_image"),
    ("text_named_png", b"this is not an image, just text\n", 415, "unsupported_media_type"),
    ("header_bomb_50000x50000", images.png_header_bomb(), 422, "image_too_large"),
    ("animated_gif", images.animated_gif(), 415, "unsupported_media_type"),
    ("animated_webp", images.animated_webp(), 422, "invalid_image"),
    ("animated_png", images.animated_png(), 422, "invalid_image"),
    ("jpeg_magic_then_png", b"\xff\xd8\xff" + PNG, 422, "invalid_image"),
]

ACCEPTED = [
    ("huge_exif", images.huge_exif_jpeg(), []),
    ("png_16bit_gray", images.png16_gray(), ["high_bit_depth_to_8bit", "grayscale_to_rgb"]),
    ("cmyk_jpeg", images.cmyk_jpeg(), ["cmyk_to_rgb"]),
    ("rgba_png", images.rgba_png(), ["alpha_on_white"]),
    ("exif_rotated", images.exif_rotated_jpeg(), ["exif_transpose"]),
    ("one_pixel", images.png(1, 1), []),
]


def post(client: TestClient, data: bytes, filename: str = "in.png"):
    return client.post("/v1/restore", files={"image": (filename, data, "image/png")})


@pytest.mark.parametrize(("name", "data", "status", "code"), REFUSED, ids=[r[0] for r in REFUSED])
def test_refused_with_clear_problem(
    client: TestClient, name: str, data: bytes, status: int, code: str
) -> None:
    resp = post(client, data)
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.json()["code"] == code and resp.json()["detail"]


@pytest.mark.parametrize(("name", "data", "conversions"), ACCEPTED, ids=[a[0] for a in ACCEPTED])
def test_accepted_with_documented_conversions(
    client: TestClient, name: str, data: bytes, conversions: list[str]
) -> None:
    resp = post(client, data)
    assert resp.status_code == 202, resp.text
    assert resp.json()["input"]["conversions"] == conversions


def test_non_utf8_filename(client: TestClient) -> None:
    body = (
        b'--B\r\nContent-Disposition: form-data; name="image"; filename="\xff\xfe\xe9t\xe9.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + PNG + b"\r\n--B--\r\n"
    )
    resp = client.post(
        "/v1/restore", content=body, headers={"Content-Type": "multipart/form-data; boundary=B"}
    )
    assert resp.status_code == 202, resp.text


def test_exif_rotation_reports_rotated_size(client: TestClient) -> None:
    resp = post(client, images.exif_rotated_jpeg(40, 20, orientation=6))
    assert (resp.json()["input"]["width"], resp.json()["input"]["height"]) == (20, 40)
