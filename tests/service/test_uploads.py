"""The multipart reader's own limits (service/uploads.py): each refusal is a 400/413, never a 500."""

from __future__ import annotations

from fastapi.testclient import TestClient

from common.blobstore import input_key
from service.uploads import MAX_FIELDS
from tests.common import images

PNG = images.png(32, 32)
HEADERS = {"Content-Type": "multipart/form-data; boundary=B"}


def part(name: str, value: bytes, filename: str | None = None) -> bytes:
    extra = f'; filename="{filename}"' if filename else ""
    return f'--B\r\nContent-Disposition: form-data; name="{name}"{extra}\r\n\r\n'.encode() + value + b"\r\n"


def post(client: TestClient, *parts: bytes):
    return client.post("/v1/restore", content=b"".join(parts) + b"--B--\r\n", headers=HEADERS)


def test_limits_on_parts_are_bad_requests(client: TestClient) -> None:
    image = part("image", PNG, "a.png")
    cases = {
        "second file": [image, part("image2", PNG, "b.png")],
        "long field": [image, part("prompt", b"x" * 5000)],
        "too many fields": [image, *(part(f"f{i}", b"1") for i in range(MAX_FIELDS + 1))],
        "no name": [image, b"--B\r\nContent-Disposition: form-data\r\n\r\nx\r\n"],
    }
    for label, parts in cases.items():
        resp = post(client, *parts)
        assert resp.status_code == 400, (label, resp.text)
        assert resp.json()["code"] == "bad_request"
    resp = client.post("/v1/restore", content=image, headers={"Content-Type": "multipart/form-data"})
    assert resp.status_code == 400 and "boundary" in resp.json()["detail"]


def test_large_upload_in_many_chunks_is_stored_byte_exact(make_client, redis_client) -> None:
    client = make_client(max_upload_bytes=3 * 1024 * 1024)
    image = images.png(16, 16) + bytes(range(256)) * 8192  # 2 MiB of trailing bytes: > one feed block
    body = part("image", image, "big.png") + part("prompt", "café".encode()) + b"--B--\r\n"

    def chunks():
        for i in range(0, len(body), 7001):
            yield body[i : i + 7001]

    resp = client.post("/v1/restore", content=chunks(), headers=HEADERS)
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert job["params"]["prompt"] == "café" and job["input"]["bytes"] == len(image)
    assert redis_client.get(f"diffbir:blob:{input_key(job['id'])}") == image
