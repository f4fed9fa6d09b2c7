"""Hostile-client and failure-path checks of the API found in the security/fault review."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from starlette.requests import Request

from common.errors import BadRequestError
from common.idempotency import IdempotencyRecord
from common.jobs import ANONYMOUS_OWNER, ResultInfo, new_job_id, result_url
from common.params import RestoreParams
from common.settings import Settings
from service.app import create_app
from service.app_state import Services
from service.metrics import ApiMetrics
from service.submit import ABANDONED_CLAIM_S, fingerprint
from service.uploads import read_upload
from tests.common import images
from tests.service.conftest import ClientFactory
from tests.service.test_api import PROBLEM, submit


def test_made_up_http_methods_share_one_metrics_label(client: TestClient) -> None:
    for i in range(5):
        client.request(f"FOO{i}", "/v1/jobs/j_" + "a" * 22)
    text = client.get("/metrics").text
    assert "FOO" not in text  # one series per made-up method would let a client grow /metrics forever
    assert 'diffbir_http_requests_total{method="other",route="/v1/jobs/{job_id}",status="405"} 5.0' in text


def test_unexpected_error_is_problem_json_without_internals(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = submit(client).json()["id"]

    def broken(_job_id: str) -> None:
        raise RuntimeError("password=hunter2 at 10.0.0.7")

    monkeypatch.setattr(client.app.state.services.jobs, "request_cancel", broken)
    resp = client.post(f"/v1/jobs/{job_id}/cancel")
    assert resp.status_code == 500 and resp.headers["content-type"] == PROBLEM
    assert resp.json()["code"] == "internal"
    assert "hunter2" not in resp.text and "10.0.0.7" not in resp.text


def test_any_redis_error_is_503(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    job_id = submit(client).json()["id"]

    def read_only(_job_id: str) -> None:  # what a client gets while Redis fails over to a replica
        raise redis.exceptions.ReadOnlyError("You can't write against a read only replica.")

    monkeypatch.setattr(client.app.state.services.jobs, "request_cancel", read_only)
    resp = client.post(f"/v1/jobs/{job_id}/cancel")
    assert resp.status_code == 503 and resp.json()["code"] == "unavailable"
    assert "retry-after" in resp.headers


def test_non_ascii_digits_in_content_length_are_400() -> None:
    # Built as a raw ASGI request: HTTP clients re-encode such a header before it could reach the app.
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/restore",
        "headers": [(b"content-type", b"multipart/form-data; boundary=b"), (b"content-length", b"\xb2")],
    }

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"--b--\r\n", "more_body": False}

    with pytest.raises(BadRequestError, match="Content-Length"):
        asyncio.run(read_upload(Request(scope, receive), 1000))


def test_an_upload_trickling_in_is_cut_off_with_408(redis_url: str) -> None:
    # httpx's ASGI transport feeds the body to the app as the generator yields it (TestClient reads it all
    # first), so the app really sees a client that trickles.
    settings = Settings(redis_url=redis_url, upload_timeout_s=0.3)
    app = create_app(settings)

    async def trickle() -> AsyncIterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
        for _ in range(40):
            await asyncio.sleep(0.05)
            yield b"\x00" * 16

    async def scenario() -> httpx.Response:
        app.state.services = Services.build(settings, ApiMetrics())
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
                headers = {"Content-Type": "multipart/form-data; boundary=b"}
                return await http.post("/v1/restore", content=trickle(), headers=headers)
        finally:
            await app.state.services.aclose()

    started = time.monotonic()
    resp = asyncio.run(scenario())
    assert resp.status_code == 408 and resp.json()["code"] == "request_timeout"
    assert time.monotonic() - started < 1.5  # refused at the deadline, not after the whole 2 s body


def test_uploads_in_flight_are_bounded_per_process(redis_url: str) -> None:
    settings = Settings(redis_url=redis_url, max_concurrent_uploads=1, upload_timeout_s=5)
    app = create_app(settings)
    release = asyncio.Event()

    async def held_open() -> AsyncIterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
        await release.wait()
        yield images.png(8, 8) + b"\r\n--b--\r\n"

    async def scenario() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        app.state.services = Services.build(settings, ApiMetrics())
        headers = {"Content-Type": "multipart/form-data; boundary=b"}
        files = {"image": ("a.png", images.png(8, 8), "image/png")}
        try:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://api"
            ) as http:
                slow = asyncio.create_task(http.post("/v1/restore", content=held_open(), headers=headers))
                await asyncio.sleep(0.2)
                refused = await http.post("/v1/restore", files=files)
                release.set()
                first = await slow
                after = await http.post("/v1/restore", files=files)
                return first, refused, after
        finally:
            await app.state.services.aclose()

    first, refused, after = asyncio.run(scenario())
    assert refused.status_code == 503 and refused.json()["code"] == "busy"
    assert refused.headers["retry-after"] == "1"
    assert first.status_code == 202 and after.status_code == 202  # the slot is given back


def test_default_upload_deadline_leaves_room_for_slow_links() -> None:
    assert Settings().upload_timeout_s >= 60


def test_openapi_lists_the_error_responses(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()["paths"]
    expected = {
        ("/v1/restore", "post"): {"400", "401", "408", "409", "413", "415", "422", "429", "503"},
        ("/v1/jobs/{job_id}", "get"): {"401", "404", "503"},
        ("/v1/jobs/{job_id}/result", "get"): {"401", "404", "409", "503"},
        ("/v1/jobs/{job_id}/cancel", "post"): {"401", "404", "409", "503"},
        ("/v1/jobs/{job_id}", "delete"): {"401", "404", "409", "503"},
    }
    for (path, method), codes in expected.items():
        documented = set(spec[path][method]["responses"])
        assert codes <= documented, (path, method, codes - documented)


def test_presigning_runs_off_the_event_loop(
    make_client: ClientFactory, s3_env: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = make_client()
    job_id = submit(client).json()["id"]
    services = client.app.state.services
    services.jobs.mark_running(job_id)
    info = ResultInfo(url=result_url(job_id), content_type="image/png", width=4, height=4)
    services.jobs.succeed(job_id, info)
    on_loop: list[bool] = []
    sign = services.blobs.presigned_url

    def spy(key: str, ttl: int) -> str | None:
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return sign(key, ttl)

    monkeypatch.setattr(services.blobs, "presigned_url", spy)
    assert client.get(f"/v1/jobs/{job_id}/result", follow_redirects=False).status_code == 307
    assert on_loop == [False]  # credential refresh may do network I/O: never on the loop


def test_a_claim_abandoned_by_a_killed_request_is_taken_over(client: TestClient) -> None:
    """The API died between claiming an Idempotency-Key and storing its job: retries must not get 409
    for the whole idempotency TTL."""
    image = images.png(8, 8)
    keys = client.app.state.services.idempotency
    stale = IdempotencyRecord(
        job_id=new_job_id(),
        fingerprint=fingerprint(image, RestoreParams()),
        created_at=time.time() - ABANDONED_CLAIM_S - 1,
    )
    assert client.portal.call(keys.claim, ANONYMOUS_OWNER, "order-9", stale) is None  # on the app's loop
    resp = submit(client, image, headers={"Idempotency-Key": "order-9"})
    assert resp.status_code == 202, resp.text
    again = submit(client, image, headers={"Idempotency-Key": "order-9"})
    assert again.status_code == 202 and again.json()["id"] == resp.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"


def test_a_fresh_claim_without_its_job_is_still_in_progress(client: TestClient) -> None:
    image = images.png(8, 8)
    record = IdempotencyRecord(job_id=new_job_id(), fingerprint=fingerprint(image, RestoreParams()))
    keys = client.app.state.services.idempotency
    assert client.portal.call(keys.claim, ANONYMOUS_OWNER, "order-10", record) is None
    resp = submit(client, image, headers={"Idempotency-Key": "order-10"})
    assert resp.status_code == 409 and resp.json()["code"] == "idempotency_in_progress"
    assert resp.headers["retry-after"] == "1"
