from __future__ import annotations

import base64
import json
import subprocess
import sys
import time

import httpx
import pytest
import redis
from fastapi.testclient import TestClient

from common.blobstore import input_key, make_blobstore, result_key
from common.job_store import JobStore
from common.jobs import JobStatus, ResultInfo, result_url
from common.settings import Settings
from common.workers import WorkerRegistry
from tests.common import images
from tests.conftest import RedisServer
from tests.service.conftest import ClientFactory

PROBLEM = "application/problem+json"


def submit(
    client: TestClient, data: bytes | None = None, headers: dict[str, str] | None = None, **fields: str
):
    files = {"image": ("in.png", data if data is not None else images.png(), "image/png")}
    return client.post("/v1/restore", files=files, data=fields, headers=headers or {})


def queued_job_ids(redis_client: redis.Redis) -> list[str]:
    bodies = [json.loads(base64.b64decode(json.loads(m)["body"])) for m in redis_client.lrange("gpu", 0, -1)]
    return [body[0][0] for body in bodies]


def finish(store: JobStore, settings: Settings, job_id: str, data: bytes, fmt: str = "png") -> None:
    """Do what the worker does on success."""
    store.mark_running(job_id)
    make_blobstore(settings).put(result_key(job_id, fmt), data, f"image/{fmt}")
    store.succeed(job_id, ResultInfo(url=result_url(job_id), content_type=f"image/{fmt}", width=4, height=4))


def test_submit_records_stores_and_enqueues(client: TestClient, redis_client: redis.Redis) -> None:
    data = images.png(32, 24)
    resp = submit(client, data, task="denoise", upscale="1", steps="10", seed="7")
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert resp.headers["location"] == f"http://testserver/v1/jobs/{job['id']}" == job["urls"]["get"]
    assert job["status"] == "queued" and "owner" not in job
    assert job["params"]["task"] == "denoise" and job["params"]["steps"] == 10 and job["params"]["seed"] == 7
    assert job["input"] == {"width": 32, "height": 24, "format": "png", "bytes": len(data), "conversions": []}
    assert queued_job_ids(redis_client) == [job["id"]]
    assert redis_client.get(f"diffbir:blob:{input_key(job['id'])}") == data  # original bytes kept
    assert client.get(resp.headers["location"]).json() == job


def test_redis_input_and_record_are_written_in_one_transaction(
    client: TestClient, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the Redis blob store the input joins the record's MULTI (no separate, thread-pool put)."""

    def separate_put(*_args: object) -> None:
        raise AssertionError("the input was written outside the job record's transaction")

    monkeypatch.setattr(client.app.state.services.blobs, "put", separate_put)
    resp = submit(client, images.png(8, 8))
    assert resp.status_code == 202, resp.text
    assert redis_client.exists(f"diffbir:blob:{input_key(resp.json()['id'])}")


def test_unknown_and_malformed_job_ids_are_404(client: TestClient) -> None:
    for job_id in ("j_doesnotexist0000000000", "..%2F..%2Fetc", "x" * 300):
        resp = client.get(f"/v1/jobs/{job_id}")
        assert resp.status_code == 404 and resp.headers["content-type"] == PROBLEM
        assert resp.json()["code"] == "not_found"


def test_result_lifecycle_redis_backend(client: TestClient, store: JobStore) -> None:
    job_id = submit(client, output_format="webp").json()["id"]
    resp = client.get(f"/v1/jobs/{job_id}/result")
    assert resp.status_code == 409 and resp.json()["code"] == "job_not_finished"
    out = images.webp(4, 4)
    finish(store, client.app_settings, job_id, out, "webp")
    resp = client.get(f"/v1/jobs/{job_id}/result")
    assert resp.status_code == 200 and resp.content == out
    assert resp.headers["content-type"] == "image/webp"
    assert client.get(f"/v1/jobs/{job_id}").json()["result"]["url"] == f"/v1/jobs/{job_id}/result"


def test_result_redirects_to_presigned_s3(make_client: ClientFactory, store: JobStore, s3_env: dict) -> None:
    client = make_client()
    job_id = submit(client).json()["id"]
    out = images.png(4, 4)
    finish(store, client.app_settings, job_id, out)
    resp = client.get(f"/v1/jobs/{job_id}/result", follow_redirects=False)
    assert resp.status_code == 307
    assert httpx.get(resp.headers["location"]).content == out


def test_cancel_queued_and_running(client: TestClient, store: JobStore) -> None:
    queued = submit(client).json()["id"]
    resp = client.post(f"/v1/jobs/{queued}/cancel")
    assert resp.status_code == 200 and resp.json()["status"] == "canceled"
    assert store.mark_running(queued) is None  # it never runs
    assert client.delete(f"/v1/jobs/{queued}").json()["code"] == "invalid_transition"

    running = submit(client).json()["id"]
    store.mark_running(running)
    resp = client.delete(f"/v1/jobs/{running}")
    assert resp.status_code == 202 and resp.json()["status"] == "running"
    assert store.is_cancel_requested(running)
    store.mark_canceled(running)
    assert client.get(f"/v1/jobs/{running}").json()["status"] == JobStatus.canceled


def test_idempotency_key(client: TestClient, redis_client: redis.Redis) -> None:
    first = submit(client, headers={"Idempotency-Key": "abc"}, steps="20")
    again = submit(client, headers={"Idempotency-Key": "abc"}, steps="20")
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"] and again.headers["idempotent-replayed"] == "true"
    assert len(queued_job_ids(redis_client)) == 1
    different = submit(client, headers={"Idempotency-Key": "abc"}, steps="21")
    assert different.status_code == 422 and different.json()["code"] == "idempotency_key_reused"
    other = submit(client, headers={"Idempotency-Key": "abd"}, steps="20")
    assert other.json()["id"] != first.json()["id"]


def test_backpressure_429(make_client: ClientFactory) -> None:
    client = make_client(max_queue_depth=1, retry_after_seconds=7)
    assert submit(client).status_code == 202
    resp = submit(client)
    assert resp.status_code == 429 and resp.headers["retry-after"] == "7"
    assert resp.json()["code"] == "queue_full"
    assert 'diffbir_submissions_rejected_total{reason="queue_full"} 1.0' in client.get("/metrics").text


def test_idempotent_retry_is_answered_even_when_the_queue_is_full(make_client: ClientFactory) -> None:
    client = make_client(max_queue_depth=1)
    first = submit(client, headers={"Idempotency-Key": "k1"})
    assert first.status_code == 202
    retry = submit(client, headers={"Idempotency-Key": "k1"})
    assert retry.status_code == 202 and retry.json()["id"] == first.json()["id"]
    fresh = submit(client, headers={"Idempotency-Key": "k2"})
    assert fresh.status_code == 429
    client.app.state.services.redis.delete("gpu")  # the queue drains: k2 was released, so it can be retried
    assert submit(client, headers={"Idempotency-Key": "k2"}).status_code == 202


def test_auth_and_ownership(make_client: ClientFactory) -> None:
    client = make_client(api_keys=["key-a", "key-b"])
    resp = submit(client)
    assert resp.status_code == 401 and resp.headers["www-authenticate"].startswith("Bearer")
    assert submit(client, headers={"Authorization": "Bearer wrong"}).status_code == 401
    job_id = submit(client, headers={"Authorization": "Bearer key-a"}).json()["id"]
    assert client.get(f"/v1/jobs/{job_id}", headers={"Authorization": "Bearer key-a"}).status_code == 200
    assert client.get(f"/v1/jobs/{job_id}", headers={"Authorization": "Bearer key-b"}).status_code == 404
    assert (
        client.post(f"/v1/jobs/{job_id}/cancel", headers={"Authorization": "Bearer key-b"}).status_code == 404
    )
    assert client.get(f"/v1/jobs/{job_id}").status_code == 401
    for path in ("/healthz", "/metrics"):
        assert client.get(path).status_code == 200
    assert client.get("/readyz").status_code == 503  # reachable without a key; no worker yet


def test_every_v1_route_requires_a_key(make_client: ClientFactory) -> None:
    client = make_client(api_keys=["key-a"])
    spec = client.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    paths = {p: ops for p, ops in spec["paths"].items() if p.startswith("/v1/")}
    assert sum(len(ops) for ops in paths.values()) == 8  # ... and GET /v1/models
    for template, ops in paths.items():
        for method in ops:
            path = template.replace("{job_id}", "j_" + "a" * 22)
            assert client.request(method, path).status_code == 401, (method, path)


def test_upload_size_cap(make_client: ClientFactory) -> None:
    client = make_client(max_upload_bytes=2000)
    big = images.png(64, 64) + b"\x00" * 3000
    resp = submit(client, big)
    assert resp.status_code == 413 and resp.json()["code"] == "payload_too_large"

    def chunks():  # no Content-Length: the cap is enforced while streaming
        yield b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
        for _ in range(200):
            yield b"\x00" * 1024

    resp = client.post(
        "/v1/restore", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b"}
    )
    assert resp.status_code == 413


def test_request_shape_errors(client: TestClient) -> None:
    resp = client.post("/v1/restore", content=b"task=sr", headers={"Content-Type": "text/plain"})
    assert resp.status_code == 415
    resp = client.post("/v1/restore", json={"task": "sr"})  # JSON without an image
    assert resp.status_code == 422 and resp.json()["errors"][0]["loc"] == ["image"]
    resp = client.post("/v1/restore", data={"task": "sr"}, files={"other": ("x", b"1")})
    assert resp.status_code == 422
    resp = client.post("/v1/restore", files={"task": (None, "sr")})  # multipart without an image
    assert resp.status_code == 422 and "image" in resp.json()["detail"]
    resp = client.post(
        "/v1/restore", content=b"garbage", headers={"Content-Type": "multipart/form-data; boundary=z"}
    )
    assert resp.status_code == 400 and resp.json()["code"] == "bad_request"
    resp = submit(client, steps="1000", sampler="euler")
    assert resp.status_code == 422
    assert {e["loc"][0] for e in resp.json()["errors"]} == {"steps", "sampler"}
    assert submit(client, colour="red").status_code == 422  # unknown field


def test_output_pixel_limit_and_callback_guard(make_client: ClientFactory) -> None:
    client = make_client(max_output_pixels=100 * 100)
    resp = submit(client, images.png(32, 32), upscale="4")
    assert resp.status_code == 422 and resp.json()["code"] == "image_too_large"
    resp = submit(client, images.png(8, 8), upscale="2", callback_url="http://127.0.0.1:9/hook")
    assert resp.status_code == 422 and resp.json()["errors"][0]["loc"] == ["callback_url"]


def test_readyz_follows_worker_heartbeats(client: TestClient, redis_client: redis.Redis) -> None:
    resp = client.get("/readyz")
    assert resp.status_code == 503 and resp.headers["content-type"] == PROBLEM
    workers = WorkerRegistry(redis_client)
    workers.beat("w1")
    body = client.get("/readyz").json()
    assert body["status"] == "ready" and body["worker_heartbeat_age_s"] < 5
    workers.beat("w1", now=time.time() - 3600)
    assert client.get("/readyz").status_code == 503


def test_metrics_use_route_templates(client: TestClient) -> None:
    job_id = submit(client).json()["id"]
    client.get(f"/v1/jobs/{job_id}")
    text = client.get("/metrics").text
    assert 'route="/v1/jobs/{job_id}",status="200"' in text
    assert job_id not in text
    assert 'diffbir_jobs_submitted_total{task="sr"} 1.0' in text
    assert "diffbir_queue_depth 1.0" in text


def test_redis_outage_is_503_then_recovers(client: TestClient, redis_server: RedisServer) -> None:
    job_id = submit(client).json()["id"]
    redis_server.stop()
    try:
        for resp in (client.get(f"/v1/jobs/{job_id}"), submit(client), client.get("/readyz")):
            assert resp.status_code == 503, resp.text
            assert resp.headers["content-type"] == PROBLEM and "retry-after" in resp.headers
    finally:
        redis_server.start()
    assert client.get(f"/v1/jobs/{job_id}").status_code == 404  # back (the throwaway Redis lost its data)
    assert submit(client).status_code == 202


def test_openapi_documents_the_upload(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/restore"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"image", "fidelity", "steps", "sampler"} <= set(body["properties"])


def test_api_does_not_import_torch() -> None:
    code = "import sys, service.app, service.__main__; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "False"
