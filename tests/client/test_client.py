from __future__ import annotations

import asyncio

import httpx
import pytest

from client import (
    APIError,
    AsyncRestoreClient,
    JobFailedError,
    PollSchedule,
    RestoreClient,
    WaitTimeoutError,
)
from client.jobs import Job, Progress
from tests.client.conftest import JOB_ID, FakeClock, ScriptedAPI, job_doc, json_response, problem

BASE = "http://api.test"
JOB_PATH = f"/v1/jobs/{JOB_ID}"


def make_client(api: ScriptedAPI, clock: FakeClock, api_key: str | None = "secret") -> RestoreClient:
    return RestoreClient(BASE, api_key, transport=api.transport(), sleep=clock.sleep, clock=clock.monotonic)


def test_submit_sends_multipart_form_and_headers(api: ScriptedAPI, clock: FakeClock, tmp_path):
    image = tmp_path / "photo.png"
    image.write_bytes(b"\x89PNG fake bytes")
    api.on("POST", "/v1/restore", [json_response(202, job_doc(), {"Location": JOB_PATH})])
    with make_client(api, clock) as client:
        job = client.submit(image, idempotency_key="k-1", fidelity=0.7, task="sr", upscale=4, seed=None)
    assert job == Job(id=JOB_ID, status="queued", progress=Progress())
    request = api.requests[0]
    assert request.headers["Authorization"] == "Bearer secret"
    assert request.headers["Idempotency-Key"] == "k-1"
    body = request.content.decode("latin-1")
    assert 'name="image"; filename="photo.png"' in body and "Content-Type: image/png" in body
    assert 'name="fidelity"\r\n\r\n0.7\r\n' in body
    assert 'name="upscale"\r\n\r\n4\r\n' in body
    assert 'name="seed"' not in body  # None means "server default", so it is not sent


def test_problem_json_becomes_typed_error(api: ScriptedAPI, clock: FakeClock):
    api.on("POST", "/v1/restore", [problem(429, "queue_full", "1000 jobs queued", **{"Retry-After": "30"})])
    with make_client(api, clock, api_key=None) as client, pytest.raises(APIError) as info:
        client.submit(b"bytes", fidelity=0.5)
    err = info.value
    assert (err.status, err.code, err.detail, err.retry_after) == (
        429,
        "queue_full",
        "1000 jobs queued",
        30.0,
    )
    assert err.retryable
    assert "Authorization" not in api.requests[0].headers


def test_non_json_error_still_raises_api_error(api: ScriptedAPI, clock: FakeClock):
    api.on("GET", JOB_PATH, [httpx.Response(502, text="<html>bad gateway</html>")])
    with make_client(api, clock) as client, pytest.raises(APIError) as info:
        client.get(JOB_ID)
    assert (info.value.status, info.value.code) == (502, "http_502")


def test_wait_reports_each_snapshot_and_returns_final_job(api: ScriptedAPI, clock: FakeClock):
    snapshots = [
        job_doc("queued"),
        job_doc("running", "sampler", 1, 4),
        job_doc("running", "sampler", 3, 4),
        job_doc("succeeded", "done", 4, 4, result={"url": f"{JOB_PATH}/result", "width": 8, "height": 8}),
    ]
    api.on("GET", JOB_PATH, [json_response(200, s) for s in snapshots])
    seen: list[tuple[str, int, int]] = []
    with make_client(api, clock) as client:
        final = client.wait(
            JOB_ID, on_progress=lambda j: seen.append((j.status, j.progress.step, j.progress.total))
        )
    assert seen == [("queued", 0, 0), ("running", 1, 4), ("running", 3, 4), ("succeeded", 4, 4)]
    assert final.succeeded and final.result["width"] == 8
    assert clock.delays == [0.25, 0.25, 0.25]  # progress changed every time, so no backoff


def test_wait_raises_job_failed_with_server_error_code(api: ScriptedAPI, clock: FakeClock):
    failed = job_doc("failed", error={"code": "out_of_memory", "message": "CUDA out of memory"})
    api.on(
        "GET", JOB_PATH, [json_response(200, job_doc("running", "sampler", 1, 4)), json_response(200, failed)]
    )
    with make_client(api, clock) as client, pytest.raises(JobFailedError) as info:
        client.wait(JOB_ID)
    assert info.value.code == "out_of_memory" and "CUDA out of memory" in str(info.value)


def test_wait_times_out_with_backoff_while_nothing_changes(api: ScriptedAPI, clock: FakeClock):
    api.on("GET", JOB_PATH, [json_response(200, job_doc("queued"))])
    with make_client(api, clock) as client, pytest.raises(WaitTimeoutError) as info:
        client.wait(JOB_ID, timeout=3.0, schedule=PollSchedule(initial=0.5, factor=2.0, maximum=1.0))
    assert info.value.job.status == "queued"
    assert clock.delays[:3] == [0.5, 1.0, 1.0]
    assert sum(clock.delays) == pytest.approx(3.0)


def test_wait_rides_out_transient_errors_but_not_client_errors(api: ScriptedAPI, clock: FakeClock):
    api.on(
        "GET",
        JOB_PATH,
        [
            json_response(200, job_doc("running", "sampler", 1, 2)),
            problem(503, "unavailable", "redis down"),
            httpx.ConnectError("connection refused"),
            json_response(200, job_doc("succeeded", "done", 2, 2)),
        ],
    )
    with make_client(api, clock) as client:
        assert client.wait(JOB_ID).succeeded

    gone = ScriptedAPI().on(
        "GET", JOB_PATH, [json_response(200, job_doc("queued")), problem(404, "not_found", "x")]
    )
    with make_client(gone, clock) as client, pytest.raises(APIError) as info:
        client.wait(JOB_ID)
    assert info.value.status == 404


def test_result_follows_presigned_redirect_without_leaking_the_api_key(api: ScriptedAPI, clock: FakeClock):
    presigned = "http://objects.test/bucket/results/x.png?X-Amz-Signature=abc"
    api.on("GET", f"{JOB_PATH}/result", [httpx.Response(307, headers={"Location": presigned})])
    api.on("GET", presigned, [httpx.Response(200, content=b"PNGDATA")])
    with make_client(api, clock) as client:
        assert client.result(JOB_ID) == b"PNGDATA"
    assert api.requests[0].headers["Authorization"] == "Bearer secret"
    assert "Authorization" not in api.requests[1].headers


def test_result_before_finish_is_a_conflict(api: ScriptedAPI, clock: FakeClock):
    api.on("GET", f"{JOB_PATH}/result", [problem(409, "job_not_finished", "still running")])
    with make_client(api, clock) as client, pytest.raises(APIError) as info:
        client.result(JOB_ID)
    assert info.value.code == "job_not_finished" and not info.value.retryable


def test_cancel_accepts_document_or_no_content(api: ScriptedAPI, clock: FakeClock):
    api.on("DELETE", JOB_PATH, [json_response(202, job_doc("canceled")), httpx.Response(204)])
    api.on("GET", JOB_PATH, [json_response(200, job_doc("canceled"))])
    with make_client(api, clock) as client:
        assert client.cancel(JOB_ID).status == "canceled"
        assert client.cancel(JOB_ID).status == "canceled"


def test_poll_schedule_grows_while_idle_and_resets_on_change():
    schedule = PollSchedule(initial=0.5, factor=2.0, maximum=3.0)
    queued = Job(JOB_ID, "queued")
    delays = [schedule.next_delay(queued) for _ in range(4)]
    assert delays == [0.5, 1.0, 2.0, 3.0]
    assert schedule.next_delay(Job(JOB_ID, "running", Progress("sampler", 1, 4, 0.25))) == 0.5
    with pytest.raises(ValueError):
        PollSchedule(initial=0)


def test_job_from_dict_rejects_non_job_documents():
    with pytest.raises(ValueError):
        Job.from_dict({"detail": "oops"})
    job = Job.from_dict({"id": "j_x", "status": "running", "progress": None, "future_field": 1})
    assert job.progress == Progress() and job.raw["future_field"] == 1


def test_async_client_restore_round_trip(api: ScriptedAPI):
    api.on("POST", "/v1/restore", [json_response(202, job_doc())])
    api.on(
        "GET",
        JOB_PATH,
        [json_response(200, job_doc("running", "sampler", 1, 2)), json_response(200, job_doc("succeeded"))],
    )
    api.on("GET", f"{JOB_PATH}/result", [httpx.Response(200, content=b"IMG")])
    seen: list[str] = []

    async def go() -> bytes:
        fast = PollSchedule(initial=0.001, maximum=0.001)
        async with AsyncRestoreClient(BASE, "k", transport=api.transport()) as client:
            job = await client.submit(b"in", steps=2)
            await client.wait(job.id, on_progress=lambda j: seen.append(j.status), schedule=fast)
            return await client.result(job.id)

    assert asyncio.run(go()) == b"IMG"
    assert seen == ["running", "succeeded"]
