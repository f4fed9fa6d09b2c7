"""A job's spans on the worker (worker.job_trace), read back from OpenTelemetry's in-memory exporter: the job
continues the trace stored in its record, stage spans come from the pipeline's progress callback, and
storage calls, decode and encode nest under the job. The cross-process trace is tests/e2e/
test_observability_e2e.py."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from common import telemetry
from common.blobstore import input_key
from common.jobs import InputInfo, Job, new_job_id, utcnow
from common.params import RestoreParams
from model.errors import ModelError
from tests.worker.conftest import Harness, png_bytes
from worker.lifecycle import run_job


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


def submit_traced(harness: Harness, traceparent: str | None, steps: int = 3) -> Job:
    job = Job(
        id=new_job_id(),
        params=RestoreParams(steps=steps, upscale=2),
        input=InputInfo(width=16, height=12, format="png"),
        created_at=utcnow(),
        traceparent=traceparent,
    )
    harness.ctx.store.create(job)
    harness.ctx.blobs.put(input_key(job.id), png_bytes(), "image/png")
    return job


def named(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {span.name: span for span in exporter.get_finished_spans()}


def request_span() -> tuple[str, int, int]:
    """A stand-in for the API's request span: its traceparent, trace id and span id."""
    provider = telemetry.provider()
    assert provider is not None
    with provider.get_tracer("api").start_as_current_span("POST /v1/restore") as span:
        traceparent = telemetry.current_traceparent()
    assert traceparent is not None
    context = span.get_span_context()
    return traceparent, context.trace_id, context.span_id


def test_job_continues_the_trace_stored_in_its_record(harness: Harness, spans: InMemorySpanExporter) -> None:
    traceparent, trace_id, request_id = request_span()
    job = submit_traced(harness, traceparent)
    assert run_job(harness.ctx, job.id) == "succeeded"

    by_name = named(spans)
    job_span = by_name["job"]
    assert job_span.context.trace_id == trace_id
    assert job_span.parent is not None and job_span.parent.span_id == request_id
    assert job_span.attributes is not None and job_span.attributes["diffbir.outcome"] == "succeeded"
    # The scripted pipeline reports stage1 then sampler steps, as the real one does (plus three more).
    for name in ("stage1", "sampler", "fetch input", "decode", "encode_output", "store result"):
        span = by_name[name]
        assert span.context.trace_id == trace_id, name
        assert span.parent is not None and span.parent.span_id == job_span.context.span_id, name
    stage1, sampler = by_name["stage1"], by_name["sampler"]
    assert stage1.end_time is not None and sampler.start_time is not None
    assert stage1.end_time <= sampler.start_time  # one stage ends where the next begins
    assert sampler.end_time is not None and job_span.end_time is not None
    assert sampler.end_time <= job_span.end_time


def test_a_delivery_from_another_trace_is_linked_not_parented(
    harness: Harness, spans: InMemorySpanExporter
) -> None:
    traceparent, trace_id, _ = request_span()
    job = submit_traced(harness, traceparent)
    provider = telemetry.provider()
    assert provider is not None
    # E.g. recovery re-enqueued the job from a heartbeat thread: its delivery belongs to a trace of its own.
    with provider.get_tracer("celery").start_as_current_span("run/diffbir.restore") as delivery:
        assert run_job(harness.ctx, job.id) == "succeeded"
    job_span = named(spans)["job"]
    assert job_span.context.trace_id == trace_id != delivery.get_span_context().trace_id
    assert [link.context.span_id for link in job_span.links] == [delivery.get_span_context().span_id]


def test_a_failed_job_span_records_the_error(harness: Harness, spans: InMemorySpanExporter) -> None:
    traceparent, _, _ = request_span()
    job = submit_traced(harness, traceparent)
    harness.pipeline.raise_at_step, harness.pipeline.error = 1, ModelError("boom")
    assert run_job(harness.ctx, job.id) == "failed"
    job_span = named(spans)["job"]
    assert job_span.status.status_code is StatusCode.ERROR
    assert job_span.attributes is not None and job_span.attributes["diffbir.outcome"] == "failed"
    assert named(spans)["sampler"].end_time is not None  # the open stage is closed when the model raises


def test_stage_and_outcome_log_lines_carry_the_job(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    job = harness.submit(steps=3)
    with caplog.at_level(logging.INFO, logger="worker.job_trace"):
        assert run_job(harness.ctx, job.id) == "succeeded"
    records = [r for r in caplog.records if r.name == "worker.job_trace"]
    stages = [(r.stage, r.job_id) for r in records if r.getMessage() == "stage finished"]  # type: ignore[attr-defined]
    assert stages == [("stage1", job.id), ("sampler", job.id)]
    done = [r for r in records if r.getMessage() == "job finished"]
    assert len(done) == 1
    assert done[0].outcome == "succeeded" and done[0].duration_s > 0  # type: ignore[attr-defined]
