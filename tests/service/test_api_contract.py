"""The API contract of issue 11 at the app level: the OpenAPI document, absolute URLs and expiry, sync mode
(``Prefer: wait``) and the probe findings (slow DNS, thin strips, PNG text chunks, 405/HEAD, cut bodies)."""

from __future__ import annotations

import io
import threading
import time
from datetime import datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image, PngImagePlugin

from common.job_store import JobStore
from common.jobs import ResultInfo
from tests.common import images
from tests.service.conftest import ClientFactory
from tests.service.test_api import submit

# --------------------------------------------------------------------------------------------- OpenAPI


@pytest.fixture
def spec(make_client: ClientFactory) -> dict[str, Any]:
    client = make_client(api_keys=["k"])
    resp = client.get("/openapi.json")
    assert resp.status_code == 200
    return resp.json()


def test_operations_have_stable_ids_and_only_real_statuses(spec: dict[str, Any]) -> None:
    ops = {(m, p): op for p, item in spec["paths"].items() for m, op in item.items()}
    assert {op["operationId"] for op in ops.values()} >= {
        "submit_job",
        "get_job",
        "get_job_result",
        "cancel_job",
        "delete_job",
        "healthz",
        "readyz",
        "metrics",
        "list_jobs",
        "job_events",
        "list_models",
    }
    assert all(
        not op["operationId"].endswith("_get") for op in ops.values()
    )  # none left to FastAPI's default
    for (method, path), op in ops.items():
        validates = op["operationId"] in ("list_jobs", "job_events")  # query / Last-Event-ID bounds
        if (method in ("get", "delete") or path.endswith("/cancel")) and not validates:
            assert "422" not in op["responses"], (method, path)  # no phantom validation error
        for parameter in op.get("parameters", []):
            if parameter["name"] == "job_id":
                assert parameter["schema"]["pattern"] == r"^j_[A-Za-z0-9_-]{18,62}$"
        for status, response in op["responses"].items():
            if status[0] in "45":
                assert list(response["content"]) == ["application/problem+json"], (path, status)
                assert response["content"]["application/problem+json"]["schema"] == {
                    "$ref": "#/components/schemas/Problem"
                }
    assert "HTTPValidationError" not in spec["components"]["schemas"]


def test_typed_documents_and_headers(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    job = schemas["JobDocument"]["properties"]
    assert set(job) >= {
        "id",
        "status",
        "progress",
        "params",
        "result",
        "error",
        "timings",
        "urls",
        "expires_at",
    }
    assert schemas["JobStatus"]["enum"] == ["queued", "running", "succeeded", "failed", "canceled"]
    assert "worker_lost" in schemas["ErrorCode"]["enum"]
    assert {
        "queue_full",
        "rate_limited",
        "active_jobs_limit",
        "not_found",
        "validation_error",
        "invalid_image",
    } <= set(schemas["ProblemCode"]["enum"])
    submit_op = spec["paths"]["/v1/restore"]["post"]
    accepted = submit_op["responses"]["202"]
    assert accepted["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/JobDocument"}
    assert {"Location", "Idempotent-Replayed", "Preference-Applied"} <= set(accepted["headers"])
    assert {"Retry-After", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"} <= set(
        submit_op["responses"]["429"]["headers"]
    )
    assert "WWW-Authenticate" in submit_op["responses"]["401"]["headers"]
    assert "Retry-After" in spec["paths"]["/v1/jobs/{job_id}"]["get"]["responses"]["503"]["headers"]
    assert list(spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == [
        "text/plain; version=1.0.0; charset=utf-8"
    ]
    result = spec["paths"]["/v1/jobs/{job_id}/result"]["get"]["responses"]["200"]["content"]
    assert list(result) == ["image/png", "image/jpeg", "image/webp"]  # no phantom JSON body
    assert spec["paths"]["/v1/restore"]["post"]["security"] == [{"bearer": []}]


def test_examples_keep_their_null_fields(spec: dict[str, Any]) -> None:
    example = spec["paths"]["/v1/jobs/{job_id}"]["get"]["responses"]["200"]["content"]["application/json"]
    assert example["example"]["finished_at"] is None and example["example"]["error"] is None
    assert example["example"]["params"]["callback_url"] is None


def test_form_fields_are_what_a_form_can_send(spec: dict[str, Any]) -> None:
    """Multipart fields have one concrete type (a form cannot send null); JSON keeps the nullable ones."""
    body = spec["paths"]["/v1/restore"]["post"]["requestBody"]["content"]
    form = body["multipart/form-data"]["schema"]
    assert form["required"] == ["image"] and form["properties"]["image"]["format"] == "binary"
    for name, field in form["properties"].items():
        assert "anyOf" not in field and field.get("default", "") is not None, name
    assert form["properties"]["seed"]["type"] == "integer"
    assert form["properties"]["callback_url"]["type"] == "string"
    json_body = spec["components"]["schemas"]["RestoreJsonBody"]
    assert json_body["required"] == ["image"] and json_body["additionalProperties"] is False
    assert {"type": "null"} in json_body["properties"]["seed"]["anyOf"]


# --------------------------------------------------------------------------------- URLs and expiry


def test_job_urls_are_absolute_and_expiry_follows_the_ttl(
    make_client: ClientFactory, store: JobStore
) -> None:
    client = make_client(public_base_url="https://api.example.com/diffbir", job_ttl_seconds=3600)
    resp = submit(client)
    job = resp.json()
    base = f"https://api.example.com/diffbir/v1/jobs/{job['id']}"
    assert job["urls"] == {
        "get": base,
        "cancel": f"{base}/cancel",
        "result": f"{base}/result",
        "events": f"{base}/events",
    }
    assert resp.headers["location"] == base
    created = datetime.fromisoformat(job["created_at"])
    assert abs(datetime.fromisoformat(job["expires_at"]) - created - timedelta(hours=1)) < timedelta(
        seconds=5
    )
    # A finished job is kept a full TTL after it finished: expires_at moves with it.
    store = JobStore(store.redis, client.app_settings)  # type: ignore[attr-defined]
    store.mark_running(job["id"])
    store.succeed(job["id"], ResultInfo(url="x", content_type="image/png", width=1, height=1))
    done = client.get(f"/v1/jobs/{job['id']}").json()
    finished = datetime.fromisoformat(done["finished_at"])
    assert abs(datetime.fromisoformat(done["expires_at"]) - finished - timedelta(hours=1)) < timedelta(
        seconds=5
    )
    assert done["urls"] == job["urls"]


def test_urls_come_from_the_request_without_a_public_base_url(client: TestClient) -> None:
    job = submit(client, headers={"Host": "restore.internal:8080"}).json()
    assert job["urls"]["get"] == f"http://restore.internal:8080/v1/jobs/{job['id']}"


# ------------------------------------------------------------------------------------------ sync mode


def test_prefer_wait_answers_when_the_job_finishes(client: TestClient, store: JobStore) -> None:
    def worker() -> None:  # plays the worker: picks the queued job up and finishes it
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            ids = [k.decode().rsplit(":", 1)[1] for k in store.redis.scan_iter("diffbir:job:*")]
            if ids:
                time.sleep(0.3)
                store.mark_running(ids[0])
                store.succeed(ids[0], ResultInfo(url="x", content_type="image/png", width=1, height=1))
                return
            time.sleep(0.02)

    thread = threading.Thread(target=worker)
    thread.start()
    start = time.monotonic()
    resp = submit(client, headers={"Prefer": "respond-async, wait=20"})
    elapsed = time.monotonic() - start
    thread.join()
    assert resp.status_code == 201, resp.text
    assert resp.json()["status"] == "succeeded" and "owner" not in resp.json()
    assert resp.headers["preference-applied"] == "wait=20"
    assert resp.headers["location"].endswith(f"/v1/jobs/{resp.json()['id']}")
    assert elapsed < 10  # woken by the job's finish, not by the 20 s deadline


def test_prefer_wait_times_out_with_202(make_client: ClientFactory) -> None:
    client = make_client(max_sync_wait_s=1)
    start = time.monotonic()
    resp = submit(client, headers={"Prefer": "wait=30"})
    assert resp.status_code == 202 and resp.json()["status"] == "queued"
    assert resp.headers["preference-applied"] == "wait=1"  # capped at max_sync_wait_s
    assert 0.9 < time.monotonic() - start < 5
    plain = submit(client, headers={"Prefer": "wait=abc"})  # malformed preference: ignored
    assert plain.status_code == 202 and "preference-applied" not in plain.headers


# ------------------------------------------------------------------------------------------ probes


def test_slow_callback_dns_does_not_stall_other_requests(make_client: ClientFactory) -> None:
    client = make_client(callback_resolve_timeout_s=1.5)
    resolving = threading.Event()

    def slow_resolver(host: str, port: int) -> list[str]:
        resolving.set()
        time.sleep(4)
        return ["93.184.216.34"]

    client.app.state.services.resolver = slow_resolver  # type: ignore[attr-defined]
    result: dict[str, Any] = {}

    def slow_submit() -> None:
        result["resp"] = submit(client, callback_url="https://slow-dns.example/hook")

    thread = threading.Thread(target=slow_submit)
    thread.start()
    assert resolving.wait(10)
    latencies = []
    for _ in range(5):
        start = time.monotonic()
        assert client.get("/healthz").status_code == 200
        latencies.append(time.monotonic() - start)
    thread.join()
    assert max(latencies) < 0.5, latencies
    # Past the timeout the URL is accepted on its syntax (delivery re-checks the resolved address).
    assert result["resp"].status_code == 202, result["resp"].text


def test_callback_to_a_private_address_is_still_refused_at_submit(client: TestClient) -> None:
    resp = submit(client, callback_url="http://10.0.0.1/hook")
    assert resp.status_code == 422 and resp.json()["errors"][0]["loc"] == ["callback_url"]


def test_thin_strip_is_refused_at_submit(client: TestClient) -> None:
    strip = images.encode(Image.new("RGB", (1, 60000)), "png")
    resp = submit(client, strip)
    assert resp.status_code == 422 and resp.json()["code"] == "image_too_large", resp.text
    assert "short side" in resp.json()["detail"]
    assert submit(client, images.png(8, 200), upscale="2").status_code == 202  # 512x12800 at stage 2: fine


def test_png_with_a_large_ztxt_chunk_is_accepted(make_client: ClientFactory) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * (3 << 20), zip=True)  # 3 MiB inflated: over Pillow's MAX_TEXT_CHUNK
    buf = io.BytesIO()
    images.rgb(40, 30).save(buf, "PNG", pnginfo=info)
    for full_decode in (False, True):
        resp = submit(make_client(submit_full_decode=full_decode), buf.getvalue())
        assert resp.status_code == 202, resp.text
        assert resp.json()["input"]["width"] == 40


def test_405_lists_every_method_and_head_is_served(client: TestClient) -> None:
    job_id = submit(client).json()["id"]
    resp = client.put(f"/v1/jobs/{job_id}")
    assert resp.status_code == 405 and resp.json()["code"] == "method_not_allowed"
    assert resp.headers["allow"] == "DELETE, GET, HEAD"
    assert client.patch("/v1/restore").headers["allow"] == "POST"
    head = client.head(f"/v1/jobs/{job_id}")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"] == "application/json"
    assert client.head("/healthz").status_code == 200
    assert client.head("/v1/jobs/j_000000000000000000000000").status_code == 404


def test_body_cut_inside_the_image_part_is_a_bad_request(client: TestClient) -> None:
    body = (
        b'--b\r\nContent-Disposition: form-data; name="steps"\r\n\r\n2\r\n'
        b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + images.png()[:100]
    )
    resp = client.post(
        "/v1/restore", content=body, headers={"Content-Type": "multipart/form-data; boundary=b"}
    )
    assert resp.status_code == 400 and resp.json()["code"] == "bad_request", resp.text


def test_replay_of_a_finished_job_is_201_only_when_waiting(client: TestClient, store: JobStore) -> None:
    key = {"Idempotency-Key": "sync-replay"}
    job_id = submit(client, headers=key).json()["id"]
    store.mark_running(job_id)
    store.succeed(job_id, ResultInfo(url="x", content_type="image/png", width=1, height=1))
    replay = submit(client, headers=key)
    assert replay.status_code == 202 and replay.headers["idempotent-replayed"] == "true"
    waited = submit(client, headers={**key, "Prefer": "wait=5"})
    assert waited.status_code == 201 and waited.json()["status"] == "succeeded"
    assert waited.headers["preference-applied"] == "wait=5"
