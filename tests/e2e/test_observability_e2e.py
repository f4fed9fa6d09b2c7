"""Traces and logs of a real job, end to end: API process -> Redis/Celery -> worker process -> webhook.

Both processes run as in production (``python -m service``, ``python -m worker``, tiny preset on CPU) with
tracing on (``DIFFBIR_OTLP_ENDPOINT`` pointing at an OTLP/HTTP receiver in this test, which decodes the
protobuf export requests of both processes) and JSON logs. Every secret the deployment knows is configured:
API keys, webhook secret, S3 credentials (moto), a Redis password, a callback URL with a token, and the test
fetches the result through a presigned URL. The test proves one connected trace per job and scans every
line both processes wrote for each of those secrets.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import redis
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.conftest import RedisServer
from tests.e2e.conftest import API_KEYS, WEBHOOK_SECRET, Stack, _base_env, wait_until
from tests.worker.conftest import Receiver, png_bytes

IMAGE = png_bytes(32, 32, (90, 140, 60))
REDIS_PASSWORD = "redis-pw-7f3a9c2e"
S3_KEY_ID = "AKIAOBSERVE7Q2X9ZK"
S3_SECRET = "s3-secret-b81d4e0c5a"
CALLBACK_TOKEN = "cb-token-5e8f21a7"
STAGES = ("stage1", "vae_encode", "sampler", "vae_decode", "postprocess")


class OtlpReceiver:
    """An OTLP/HTTP (protobuf) traces endpoint: keeps every span it is sent, with its service name."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                request = ExportTraceServiceRequest.FromString(body)
                receiver.add(request)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, request: ExportTraceServiceRequest) -> None:
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    attributes = {a.key: _value(a.value) for a in span.attributes}
                    with self.lock:
                        self.spans.append(
                            {
                                "service": resource.get("service.name"),
                                "name": span.name,
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "parent": span.parent_span_id.hex() or None,
                                "attributes": attributes,
                                "links": [link.trace_id.hex() for link in span.links],
                            }
                        )

    def trace(self, trace_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [s for s in self.spans if s["trace_id"] == trace_id]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@pytest.fixture(scope="module")
def otlp() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory, s3_server: str, otlp: OtlpReceiver) -> Iterator[Stack]:
    """API + worker with tracing, JSON logs and every secret configured (Redis with a password, S3)."""
    server = RedisServer(tmp_path_factory.mktemp("observe-redis"))
    server.start()
    redis.Redis(port=server.port).config_set("requirepass", REDIS_PASSWORD)
    authed_url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{server.port}/0"
    env = _base_env(authed_url)
    env.update(
        DIFFBIR_LOG_FORMAT="json",
        DIFFBIR_OTLP_ENDPOINT=otlp.url,
        OTEL_BSP_SCHEDULE_DELAY="200",  # export within 0.2 s rather than 5 s
        DIFFBIR_STORAGE_BACKEND="s3",
        DIFFBIR_S3_ENDPOINT_URL=s3_server,
        DIFFBIR_S3_BUCKET="diffbir-observe",
        DIFFBIR_S3_ACCESS_KEY_ID=S3_KEY_ID,
        DIFFBIR_S3_SECRET_ACCESS_KEY=S3_SECRET,
        DIFFBIR_S3_CREATE_BUCKET="true",
    )
    stack = Stack("observe", server, env, tmp_path_factory.mktemp("observe-logs"))
    stack.redis = redis.Redis.from_url(authed_url, socket_timeout=2)
    try:
        stack.start_worker()
        stack.start_api()
        yield stack
    finally:
        stack.close()
        server.stop()


@pytest.fixture(scope="module")
def finished_job(observed: Stack, otlp: OtlpReceiver) -> Iterator[dict[str, Any]]:
    """One job with a webhook, run to the end; its result fetched through the presigned URL."""
    receiver = Receiver()
    try:
        callback = f"http://127.0.0.1:{receiver.port}/hook/{CALLBACK_TOKEN}?token={CALLBACK_TOKEN}"
        resp = observed.submit(IMAGE, callback_url=callback, headers={"X-Request-ID": "req-observe-1"})
        assert resp.status_code == 202, resp.text
        assert resp.headers["x-request-id"] == "req-observe-1"
        job_id = resp.json()["id"]
        doc = observed.wait_status(job_id)
        assert doc["status"] == "succeeded", doc
        wait_until(lambda: receiver.requests, 20, what="webhook delivery")
        result = observed.http.get(f"/v1/jobs/{job_id}/result", headers=observed.headers())
        assert result.status_code == 307, result.text
        location = result.headers["location"]
        signature = parse_qs(urlsplit(location).query)["X-Amz-Signature"][0]
        trace_id = doc["traceparent"].split("-")[1]
        names = {"webhook", "POST /v1/restore"}
        wait_until(lambda: names <= {s["name"] for s in otlp.trace(trace_id)}, 20, what="spans exported")
        yield {"id": job_id, "doc": doc, "trace_id": trace_id, "signature": signature, "location": location}
    finally:
        receiver.close()


def test_one_connected_trace_from_the_request_to_the_webhook(
    finished_job: dict[str, Any], otlp: OtlpReceiver
) -> None:
    spans = otlp.trace(finished_job["trace_id"])
    by_id = {s["span_id"]: s for s in spans}
    by_name: dict[str, dict[str, Any]] = {}
    for s in spans:
        by_name.setdefault(s["name"], s)
    expected = {
        "POST /v1/restore",
        "validate upload",
        "store input",
        "publish diffbir.restore",
        "run/diffbir.restore",
        "job",
        "fetch input",
        "decode",
        *STAGES,
        "encode_output",
        "store result",
        "mark succeeded",
        "webhook",
    }
    assert expected <= set(by_name), sorted(by_name)
    # Connected: one root (the HTTP request); every other span's parent is in the same trace.
    roots = [s for s in spans if s["parent"] is None]
    assert [r["name"] for r in roots] == ["POST /v1/restore"], roots
    assert all(s["parent"] in by_id for s in spans if s["parent"] is not None)

    def parent(name: str) -> str:
        return str(by_id[by_name[name]["parent"]]["name"])

    def ancestors(name: str) -> list[str]:
        chain, span = [], by_name[name]
        while span["parent"] is not None:
            span = by_id[span["parent"]]
            chain.append(span["name"])
        return chain

    root = "POST /v1/restore"
    assert parent("validate upload") == parent("store input") == root
    assert ancestors("publish diffbir.restore")[-1] == root
    assert parent("run/diffbir.restore") == "publish diffbir.restore"  # across the queue
    assert parent("job") == root  # from the traceparent stored in the job record
    for name in (*STAGES, "decode", "fetch input", "encode_output", "store result", "mark succeeded"):
        assert parent(name) == "job", (name, parent(name))
    # The webhook is sent later by the outbox's sender threads, under the status change that queued it.
    assert parent("webhook") == "mark succeeded"
    assert {s["service"] for s in spans} == {"diffbir-api", "diffbir-worker"}
    job_span = by_name["job"]["attributes"]
    assert job_span["diffbir.job_id"] == finished_job["id"]
    assert job_span["diffbir.outcome"] == "succeeded"
    # The webhook span never names the callback URL (it carries a token).
    assert all(CALLBACK_TOKEN not in json.dumps(s) for s in spans)


def _log_lines(stack: Stack) -> dict[str, list[str]]:
    return {
        name: Path(proc.log_path).read_text(errors="replace").splitlines()
        for name, proc in (("api", stack.api), ("worker", stack.worker))
    }


def _records(lines: list[str]) -> list[dict[str, Any]]:
    records = []
    for line in lines:
        if line.startswith("{"):
            records.append(json.loads(line))
    return records


def test_json_logs_carry_the_job_context(finished_job: dict[str, Any], observed: Stack) -> None:
    logs = _log_lines(observed)
    job_id, trace_id = finished_job["id"], finished_job["trace_id"]
    api = _records(logs["api"])
    worker = _records(logs["worker"])
    assert api and worker
    # One JSON object per line, in both processes, once they are up (the test's own start marker and
    # Celery's start-up banner, which it prints itself rather than through logging, come before).
    for name, lines in logs.items():
        up = next(i for i, line in enumerate(lines) if 'ready."' in line or "startup complete" in line)
        stray = [line for line in lines[up:] if line.strip() and not line.startswith("{")]
        assert stray == [], (name, stray[:5])

    accepted = [r for r in api if r["message"] == "job accepted"]
    assert accepted and accepted[0]["job_id"] == job_id and accepted[0]["request_id"] == "req-observe-1"
    assert accepted[0]["trace_id"] == trace_id and accepted[0]["service"] == "api"
    access = [r for r in api if r["message"] == "request" and r.get("job_id") == job_id]
    submit = next(r for r in access if r["route"] == "/v1/restore")
    assert submit["status"] == 202 and submit["outcome"] == "ok" and submit["duration_s"] > 0
    assert submit["request_id"] == "req-observe-1" and submit["trace_id"] == trace_id

    stages = {r["stage"]: r for r in worker if r["message"] == "stage finished" and r["job_id"] == job_id}
    assert set(STAGES) <= set(stages), stages.keys()
    assert all(r["duration_s"] >= 0 and r["worker_id"] and r["level"] == "INFO" for r in stages.values())
    done = [r for r in worker if r["message"] == "job finished" and r["job_id"] == job_id]
    assert len(done) == 1 and done[0]["outcome"] == "succeeded" and done[0]["duration_s"] > 0
    assert done[0]["trace_id"] == trace_id and done[0]["service"] == "worker"
    webhook = [r for r in worker if r["message"].startswith("webhook") and r.get("job_id") == job_id]
    assert webhook and webhook[0]["outcome"] == "delivered" and webhook[0]["trace_id"] == trace_id


def test_no_secret_in_any_log_line(finished_job: dict[str, Any], observed: Stack) -> None:
    secrets = {
        *API_KEYS,
        WEBHOOK_SECRET,
        REDIS_PASSWORD,
        S3_KEY_ID,
        S3_SECRET,
        CALLBACK_TOKEN,
        finished_job["signature"],
    }
    logs = _log_lines(observed)
    assert sum(len(lines) for lines in logs.values()) > 50  # the scan read real logs
    for name, lines in logs.items():
        for number, line in enumerate(lines, 1):
            leaked = [s for s in secrets if s in line]
            assert not leaked, f"{name} log line {number} leaks {leaked}: {line[:300]}"
