"""Tracing: OpenTelemetry spans exported over OTLP/HTTP when an endpoint is configured, nothing otherwise.

Off (the default) means free: no OpenTelemetry module is even imported, ``span()`` hands back one shared
``nullcontext`` and ``carrier()`` returns None, so the hot paths pay a global read and a branch
(``tests/common/test_telemetry.py`` checks that nothing of OpenTelemetry is loaded when it is off).

On: ``DIFFBIR_OTLP_ENDPOINT`` or the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` names a collector; spans go there in batches from a background
thread (``BatchSpanProcessor``), and the other standard ``OTEL_*`` variables (headers, sampler, service name,
resource attributes) apply as usual. ``OTEL_SDK_DISABLED=true`` turns it off again.

One trace per job: the API stores the W3C ``traceparent`` of the submitting request in the job record
(``Job.traceparent``) and sends it in the Celery message headers; the worker opens the job's span under it
(``worker.job_trace``), so requeued or batched deliveries still land in the request's trace.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

from common.settings import Settings

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Link, Span, Tracer

log = logging.getLogger(__name__)

TRACER_NAME = "diffbir"
_OFF: AbstractContextManager[None] = nullcontext()
_provider: TracerProvider | None = None
_tracer: Tracer | None = None


def otlp_endpoint(settings: Settings, environ: Mapping[str, str] = os.environ) -> str | None:
    """The OTLP/HTTP traces URL to export to, or None (tracing off)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    setting = settings.otlp_endpoint or None  # compose passes an empty value through when unset
    base = setting or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if setting is None and environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]  # already the full URL, by the spec
    return f"{base.rstrip('/')}/v1/traces" if base else None


def configure_tracing(settings: Settings, service_name: str) -> bool:
    """Set up the SDK and the OTLP exporter if an endpoint is configured; True when tracing is on."""
    if _provider is not None:
        return True
    endpoint = otlp_endpoint(settings)
    if endpoint is None:
        return False
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # OTEL_SERVICE_NAME, when set, names the service; Resource.create lets explicit attributes win.
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service_name}
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)
    install(provider)
    log.info("tracing on: spans go to %s", endpoint)
    return True


def install(provider: TracerProvider) -> None:
    """Trace with ``provider`` from now on (``configure_tracing`` does this; tests pass an in-memory one)."""
    global _provider, _tracer
    _provider = provider
    _tracer = provider.get_tracer(TRACER_NAME)


def uninstall() -> None:
    """Back to off (tests)."""
    global _provider, _tracer
    _provider = _tracer = None


def enabled() -> bool:
    return _tracer is not None


def provider() -> TracerProvider | None:
    return _provider


def span(
    name: str, attributes: Mapping[str, Any] | None = None, producer: bool = False
) -> AbstractContextManager[Any]:
    """A child span of the current one, made current for the block; a shared no-op when tracing is off.

    ``producer``: the span sends a message (SpanKind.PRODUCER), so backends draw the hop to its consumer."""
    if _tracer is None:
        return _OFF
    if producer:
        from opentelemetry.trace import SpanKind

        return _tracer.start_as_current_span(name, attributes=attributes, kind=SpanKind.PRODUCER)
    return _tracer.start_as_current_span(name, attributes=attributes)


def child_span(name: str, attributes: Mapping[str, Any] | None = None) -> AbstractContextManager[Any]:
    """Like ``span`` but only inside a traced operation: helpers shared with background housekeeping
    (storage retries, heartbeats) then never start traces of their own."""
    if _tracer is None:
        return _OFF
    from opentelemetry.trace import get_current_span

    if not get_current_span().get_span_context().is_valid:
        return _OFF
    return _tracer.start_as_current_span(name, attributes=attributes)


def span_under(
    name: str, parent: Context | None, attributes: Mapping[str, Any] | None = None
) -> AbstractContextManager[Any]:
    """Like ``span`` but under a stored remote ``parent`` (``context_of``) instead of the current span; a new
    trace when ``parent`` is None."""
    if _tracer is None:
        return _OFF
    return _tracer.start_as_current_span(name, context=parent, attributes=attributes)


def start_span(
    name: str, parent: Context | None = None, attributes: Mapping[str, Any] | None = None, **kwargs: Any
) -> Span | None:
    """A span the caller ends itself (spans that open and close in different calls); None when off."""
    if _tracer is None:
        return None
    return _tracer.start_span(name, context=parent, attributes=attributes, **kwargs)


def carrier() -> dict[str, str] | None:
    """The current trace context as W3C headers (``traceparent``, ``tracestate``); None when off."""
    if _tracer is None:
        return None
    from opentelemetry.propagate import inject

    headers: dict[str, str] = {}
    inject(headers)
    return headers or None


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span (stored in a job so its worker continues the trace)."""
    headers = carrier()
    return headers.get("traceparent") if headers else None


def context_of(traceparent: str | None) -> Context | None:
    """The remote parent a stored ``traceparent`` names; None when off, absent or malformed."""
    if _tracer is None or not traceparent:
        return None
    from opentelemetry.propagate import extract
    from opentelemetry.trace import get_current_span

    context = extract({"traceparent": traceparent})
    return context if get_current_span(context).get_span_context().is_valid else None


def link_to_current(parent: Context | None) -> list[Link]:
    """A link to the current span when it belongs to another trace than ``parent`` (e.g. the delivery that
    ran a job requeued by recovery, or a batch mate's: the job itself continues its request's trace)."""
    if _tracer is None or parent is None:
        return []
    from opentelemetry.trace import Link, get_current_span

    current = get_current_span().get_span_context()
    if not current.is_valid or current.trace_id == get_current_span(parent).get_span_context().trace_id:
        return []
    return [Link(current)]


def context_with(span: Span) -> Context:
    """A context whose current span is ``span`` (to parent spans opened later, from other calls)."""
    from opentelemetry.trace import set_span_in_context

    return set_span_in_context(span)


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the current span as hex, for log lines; None when off or outside a span."""
    if _tracer is None:
        return None
    from opentelemetry.trace import get_current_span

    context = get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def force_flush(timeout_ms: int = 5000) -> None:
    """Export what is buffered now (before a process exits on purpose)."""
    if _provider is not None:
        _provider.force_flush(timeout_ms)
