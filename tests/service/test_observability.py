"""The API side of a trace and of a request's logs (service.observability, service.submit), in process: spans
read back from OpenTelemetry's in-memory exporter, the trace context found where the worker will look for
it (the job record and the Celery message headers in Redis), request ids on responses."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pytest
import redis
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from common import telemetry
from tests.service.conftest import ClientFactory
from tests.worker.conftest import png_bytes


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.install(provider)
    try:
        yield exporter
    finally:
        telemetry.uninstall()
        provider.shutdown()


def queued_message(client: redis.Redis) -> dict:
    (raw,) = client.lrange("gpu", 0, -1)
    return json.loads(raw)


def test_submission_spans_and_the_context_it_hands_the_worker(
    make_client: ClientFactory, spans: InMemorySpanExporter, redis_client: redis.Redis
) -> None:
    api = make_client()  # created after the provider: the FastAPI instrumentation is on
    resp = api.post("/v1/restore", files={"image": ("a.png", png_bytes(), "image/png")}, data={"steps": "2"})
    assert resp.status_code == 202, resp.text
    job = resp.json()
    by_name = {s.name: s for s in spans.get_finished_spans()}
    server = by_name["POST /v1/restore"]
    assert server.parent is None
    trace_id = server.context.trace_id
    for name in ("validate upload", "store input", "publish diffbir.restore"):
        span = by_name[name]
        assert span.context.trace_id == trace_id and span.parent is not None, name
        assert span.parent.span_id == server.context.span_id, name
    # The job record names the request's span: the worker's job span continues it on any delivery.
    version, record_trace, record_span, _ = job["traceparent"].split("-")
    assert (version, int(record_trace, 16), int(record_span, 16)) == ("00", trace_id, server.context.span_id)
    # The Celery message carries the publish span's context for the worker's Celery instrumentation.
    headers = queued_message(redis_client)["headers"]
    publish = by_name["publish diffbir.restore"]
    assert headers["traceparent"].split("-")[1:3] == [
        f"{trace_id:032x}",
        f"{publish.context.span_id:016x}",
    ]
    assert base64.b64decode(queued_message(redis_client)["body"])  # the message itself is intact


def test_probes_are_not_traced(make_client: ClientFactory, spans: InMemorySpanExporter) -> None:
    api = make_client()
    assert api.get("/healthz").status_code == 200
    assert api.get("/metrics").status_code == 200
    assert spans.get_finished_spans() == ()


def test_without_tracing_the_job_has_no_traceparent_and_messages_no_headers(
    client, redis_client: redis.Redis
) -> None:
    resp = client.post("/v1/restore", files={"image": ("a.png", png_bytes(), "image/png")})
    assert resp.status_code == 202 and resp.json()["traceparent"] is None
    assert "traceparent" not in queued_message(redis_client)["headers"]


@pytest.mark.parametrize(
    ("sent", "kept"),
    [("req-abc.123:x", True), ("has space", False), ("x" * 129, False), (None, False)],
)
def test_request_id_header(client, sent: str | None, kept: bool) -> None:
    headers = {"X-Request-ID": sent} if sent is not None else {}
    answer = client.get("/healthz", headers=headers).headers["x-request-id"]
    if kept:
        assert answer == sent
    else:
        assert answer != sent and len(answer) == 16 and int(answer, 16) >= 0
