"""Tracing switches and JSON logs (common.telemetry, common.logging_setup): off costs nothing, the endpoint
comes from our setting or the standard OTEL variables, and log lines carry context but never secrets."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from common import telemetry
from common.logging_setup import Redactor, configured_secrets, log_context, make_handler
from common.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_tracing_off_sets_up_nothing() -> None:
    """With no endpoint configured: no SDK provider, exporter, span processor thread or instrumentation;
    the API app carries no tracing middleware and the worker's job hooks make no span objects.

    (FastAPI 0.165 and redis-py 8 import the OpenTelemetry *API* themselves when it is installed; they stay
    inert while no provider is set, which is what this checks.)"""
    script = textwrap.dedent(
        """
        import os, sys, threading
        for name in [k for k in os.environ if k.startswith(("OTEL_", "DIFFBIR_"))]:
            del os.environ[name]
        from common import telemetry
        from common.jobs import InputInfo, Job, utcnow
        from common.params import RestoreParams
        from common.settings import Settings
        from service.app import create_app
        from worker.job_trace import JobTrace, setup_process
        from worker.config import WorkerSettings
        import worker.lifecycle, worker.celery_app

        app = create_app(Settings())
        setup_process(WorkerSettings(worker_preset="tiny"))
        middleware = [m.cls.__name__ for m in app.user_middleware]
        assert middleware == ["RequestContextMiddleware", "MetricsMiddleware"], middleware
        assert telemetry.span("validate upload") is telemetry.span("store input")  # one shared no-op
        assert telemetry.current_traceparent() is None and telemetry.carrier() is None
        params, info = RestoreParams(), InputInfo(width=1, height=1, format="png")
        trace = JobTrace(Job(id="j_" + "a" * 22, params=params, input=info, created_at=utcnow()))
        with trace.active(), trace.step("decode"):
            trace.stage("sampler"); trace.stage("sampler"); trace.model_done()
        trace.finish("succeeded")
        assert trace.span is None and not telemetry.enabled() and telemetry.provider() is None
        from opentelemetry import trace as otel_trace
        assert type(otel_trace.get_tracer_provider()).__name__ == "ProxyTracerProvider"
        ours = ("opentelemetry.sdk.trace", "opentelemetry.exporter", "opentelemetry.instrumentation")
        loaded = sorted(m for m in sys.modules if m.startswith(ours))
        assert loaded == [], loaded
        assert not [t.name for t in threading.enumerate() if "Otel" in t.name or "Span" in t.name]
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


@pytest.mark.parametrize(
    ("setting", "environ", "expected"),
    [
        (None, {}, None),
        ("", {}, None),
        ("http://jaeger:4318/", {}, "http://jaeger:4318/v1/traces"),
        (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4318"}, "http://otel:4318/v1/traces"),
        (None, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://otel:4318/custom"}, "http://otel:4318/custom"),
        (
            "http://jaeger:4318",
            {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://x/y"},
            "http://jaeger:4318/v1/traces",
        ),
        ("http://jaeger:4318", {"OTEL_SDK_DISABLED": "true"}, None),
    ],
)
def test_otlp_endpoint(setting: str | None, environ: dict[str, str], expected: str | None) -> None:
    assert telemetry.otlp_endpoint(Settings(otlp_endpoint=setting), environ) == expected


def test_redactor_blanks_configured_secrets_and_presigned_signatures() -> None:
    settings = Settings(
        api_keys=["api-key-123456"],
        webhook_secret="whsec-abcdef",
        s3_access_key_id="AKIAEXAMPLE1",
        s3_secret_access_key="s3/secret+key",
        redis_url="redis://:p%40ss-word@redis:6379/0",
    )
    redact = Redactor(configured_secrets(settings))
    line = (
        "keys api-key-123456 whsec-abcdef AKIAEXAMPLE1 s3/secret+key p@ss-word p%40ss-word "
        "https://s3/b/k?X-Amz-Algorithm=AWS4&X-Amz-Credential=AKIA%2F2026&X-Amz-Signature=deadbeef01 end"
    )
    out = redact(line)
    for secret in (
        "api-key-123456",
        "whsec-abcdef",
        "AKIAEXAMPLE1",
        "s3/secret+key",
        "p@ss-word",
        "deadbeef01",
    ):
        assert secret not in out
    assert "X-Amz-Algorithm=AWS4" in out and "X-Amz-Signature=***" in out and out.endswith(" end")
    assert Redactor([])("nothing secret here") == "nothing secret here"


def test_json_lines_carry_context_extras_and_no_secrets() -> None:
    stream = io.StringIO()
    settings = Settings(log_format="json", api_keys=["api-key-123456"])
    logger = logging.getLogger("tests.json")
    logger.addHandler(make_handler(settings, "api", stream=stream))
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        with log_context(request_id="r1", job_id="j_1"):
            logger.info("auth with %s", "api-key-123456", extra={"duration_s": 0.5, "outcome": "ok"})
        logger.info("outside")
    finally:
        logger.handlers.clear()
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert (
        first["message"] == "auth with ***" and first["level"] == "INFO" and first["logger"] == "tests.json"
    )
    assert first["request_id"] == "r1" and first["job_id"] == "j_1" and first["service"] == "api"
    assert first["duration_s"] == 0.5 and first["outcome"] == "ok" and "time" in first
    assert "job_id" not in second


def test_text_stays_the_default() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("tests.text")
    logger.addHandler(make_handler(Settings(), "api", stream=stream))
    logger.propagate = False
    try:
        logger.warning("plain")
    finally:
        logger.handlers.clear()
    assert Settings().log_format == "text"
    assert stream.getvalue().rstrip().endswith("WARNING tests.text: plain")


def test_log_level_setting_is_case_insensitive() -> None:
    assert Settings(log_level="debug").log_level == "DEBUG"
    with pytest.raises(ValueError):
        Settings(log_level="chatty")
