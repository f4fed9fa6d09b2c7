"""JSON submissions (issue 11, item 2): the image as a data URI or a URL the API downloads through the SSRF
guard, with the same checks and error codes as a multipart upload."""

from __future__ import annotations

import base64
import http.server
import threading
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.common import images
from tests.service.conftest import ClientFactory


def data_uri(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64," + base64.b64encode(data).decode()


class ImageServer:
    """A plain-http server on 127.0.0.1 serving fixed answers by path (what an image host would send)."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, bytes, dict[str, str]]] = {}
        routes = self.routes

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body, headers = routes.get(self.path, (404, b"not found", {}))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def serve(self, path: str, body: bytes, status: int = 200, **headers: str) -> str:
        self.routes[path] = (status, body, headers)
        return self.base + path

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def image_server() -> Iterator[ImageServer]:
    server = ImageServer()
    yield server
    server.close()


@pytest.fixture
def url_client(make_client: ClientFactory) -> TestClient:
    """An API that may fetch http://127.0.0.1 (the test policy; production: https, public hosts only)."""
    return make_client(
        image_fetch_allow_http=True, image_fetch_allow_hosts=["127.0.0.1"], max_upload_bytes=4096
    )


def test_data_uri_submission_is_an_upload(client: TestClient) -> None:
    resp = client.post("/v1/restore", json={"image": data_uri(images.png(40, 30)), "steps": 3, "seed": None})
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert job["input"] == {
        "width": 40,
        "height": 30,
        "format": "png",
        "bytes": len(images.png(40, 30)),
        "conversions": [],
    }
    assert job["params"]["steps"] == 3 and job["params"]["seed"] is None
    # The declared type is not trusted: the bytes are sniffed.
    resp = client.post("/v1/restore", json={"image": data_uri(images.jpeg(), "image/png")})
    assert resp.status_code == 202 and resp.json()["input"]["format"] == "jpeg"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"image": "data:image/png;base64,!!!notbase64"}, 422, "validation_error"),
        ({"image": "data:image/png,plain"}, 422, "validation_error"),
        ({"image": data_uri(images.animated_gif(), "image/gif")}, 415, "unsupported_media_type"),
        ({"image": data_uri(images.png()[:-20])}, 422, "invalid_image"),
        ({"image": data_uri(images.png()), "steps": 1000}, 422, "validation_error"),
        ({"image": data_uri(images.png()), "colour": "red"}, 422, "validation_error"),  # unknown field
        ({"image": 5}, 422, "validation_error"),
        ({"steps": 3}, 422, "validation_error"),
        (["not", "an", "object"], 422, "validation_error"),
    ],
)
def test_json_errors_match_upload_errors(client: TestClient, body: object, status: int, code: str) -> None:
    resp = client.post("/v1/restore", json=body)
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json" and resp.json()["code"] == code


def test_json_body_limits(make_client: ClientFactory) -> None:
    client = make_client(max_upload_bytes=2000)
    big = images.png(64, 64) + b"\0" * 2000
    resp = client.post("/v1/restore", json={"image": data_uri(big)})
    assert resp.status_code == 413 and resp.json()["code"] == "payload_too_large"
    resp = client.post("/v1/restore", content=b"{not json", headers={"Content-Type": "application/json"})
    assert resp.status_code == 400 and resp.json()["code"] == "bad_request"


def test_url_submission_downloads_the_image(url_client: TestClient, image_server: ImageServer) -> None:
    url = image_server.serve("/photo.jpg", images.jpeg(48, 32), **{"Content-Type": "image/jpeg"})
    resp = url_client.post("/v1/restore", json={"image": url, "task": "denoise", "upscale": 1})
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert job["input"]["format"] == "jpeg" and (job["input"]["width"], job["input"]["height"]) == (48, 32)
    assert job["params"]["task"] == "denoise"


def test_url_submission_errors(url_client: TestClient, image_server: ImageServer) -> None:
    def code_of(url: str) -> tuple[int, str]:
        resp = url_client.post("/v1/restore", json={"image": url})
        return resp.status_code, resp.json()["code"]

    assert code_of(image_server.base + "/missing.png") == (422, "validation_error")
    assert code_of(image_server.serve("/moved", b"", 302, Location="/photo.png")) == (422, "validation_error")
    assert code_of(image_server.serve("/page.html", b"<html>" * 10)) == (415, "unsupported_media_type")
    assert code_of(image_server.serve("/broken.png", images.png()[:-20])) == (422, "invalid_image")
    assert code_of(image_server.serve("/big.png", images.png(64, 64) + b"\0" * 5000)) == (
        413,
        "payload_too_large",
    )
    assert code_of(image_server.serve("/gz.png", images.png(), **{"Content-Encoding": "gzip"})) == (
        422,
        "validation_error",
    )
    assert code_of("ftp://127.0.0.1/x.png") == (422, "validation_error")


def test_production_policy_refuses_http_and_private_hosts(
    make_client: ClientFactory, image_server: ImageServer
) -> None:
    url = image_server.serve("/photo.png", images.png())
    strict = make_client()  # the defaults: https only, public addresses only
    resp = strict.post("/v1/restore", json={"image": url})
    assert resp.status_code == 422 and "must use https" in resp.json()["detail"]
    https_only_private = make_client(image_fetch_allow_http=True)
    resp = https_only_private.post("/v1/restore", json={"image": url})
    assert resp.status_code == 422 and "non-public address" in resp.json()["detail"]
    resp = strict.post("/v1/restore", json={"image": "https://user:pw@example.com/x.png"})
    assert resp.status_code == 422 and "credentials" in resp.json()["detail"]
