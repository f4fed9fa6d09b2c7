"""One job attempt as the on-call engineer sees it: a span in the submitting request's trace with a child
span per model stage, and log lines for each stage and for the outcome.

The model stays free of OpenTelemetry: stage spans are opened and closed from the pipeline's progress
callback (``Execution.progress``), which reports every stage (``stage1``, ``vae_encode``, ``sampler``,
``vae_decode``, ``postprocess``) at its start. A stage ends when the next one reports or the model call
returns, so its span covers the stage as the pipeline's own timer does (both sit after the stage's CUDA
sync). Off (tracing and JSON logs both optional), the per-step cost is one string comparison.

Also here: the worker process's set-up (``setup_process``: logging context, the exporter, Celery's
instrumentation), and the per-task log context (the job id of the delivered message on every line).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import Token
from typing import Any, TypeVar

from celery import signals

from common import telemetry
from common.jobs import Job
from common.logging_setup import log_context, pop_context, push_context
from worker.config import WorkerSettings

log = logging.getLogger(__name__)

T = TypeVar("T")
FAILED_OUTCOMES = ("failed",)


class JobTrace:
    """Spans and log lines of one attempt at one job (see the module docstring)."""

    def __init__(self, job: Job):
        self.job = job
        self.started = time.monotonic()
        self._stage: str | None = None
        self._stage_started = 0.0
        self._stage_span: Any = None
        self._finished = False
        self.span: Any = None
        self._context: Any = None
        if telemetry.enabled():
            parent = telemetry.context_of(job.traceparent)
            attributes = {
                "diffbir.job_id": job.id,
                "diffbir.attempt": job.attempts,
                "diffbir.task": job.params.task,
                "diffbir.steps": job.params.steps,
            }
            self.span = telemetry.start_span(
                "job", parent, attributes, links=telemetry.link_to_current(parent)
            )
            self._context = telemetry.context_with(self.span)

    @contextmanager
    def active(self) -> Iterator[None]:
        """This job's span is the current one, and its id is on every log line, inside the block."""
        with log_context(job_id=self.job.id, attempt=self.job.attempts):
            if self.span is None:
                yield
                return
            from opentelemetry.trace import use_span

            with use_span(self.span, end_on_exit=False):
                yield

    def step(self, name: str) -> AbstractContextManager[Any]:
        """A child span of the job for a block of the worker's own work (decode, encode)."""
        return nullcontext() if self.span is None else self._child(name)

    @contextmanager
    def _child(self, name: str) -> Iterator[None]:
        with self.active(), telemetry.span(name):
            yield

    def stage(self, name: str) -> None:
        """The pipeline reported ``name``: a new stage begins when it differs from the current one."""
        if name == self._stage:
            return
        self._end_stage()
        self._stage, self._stage_started = name, time.monotonic()
        if self.span is not None:
            self._stage_span = telemetry.start_span(name, self._context, {"diffbir.stage": name})

    def model_done(self) -> None:
        """The model call returned (or raised): the last stage ends here."""
        self._end_stage()

    def _end_stage(self) -> None:
        if self._stage is None:
            return
        seconds = time.monotonic() - self._stage_started
        if self._stage_span is not None:
            self._stage_span.end()
            self._stage_span = None
        log.info(
            "stage finished",
            extra={"job_id": self.job.id, "stage": self._stage, "duration_s": round(seconds, 6)},
        )
        self._stage = None

    def finish(self, outcome: str, reason: str | None = None) -> None:
        """The attempt ended with ``outcome`` (succeeded, failed, canceled, skipped); once per attempt."""
        if self._finished:
            return
        self._finished = True
        self._end_stage()
        seconds = time.monotonic() - self.started
        extra: dict[str, Any] = {
            "job_id": self.job.id,
            "attempt": self.job.attempts,
            "outcome": outcome,
            "duration_s": round(seconds, 6),
        }
        if reason:
            extra["reason"] = reason
        log.info("job finished", extra=extra)
        if self.span is not None:
            self.span.set_attribute("diffbir.outcome", outcome)
            if reason:
                self.span.set_attribute("diffbir.reason", reason)
            if outcome in FAILED_OUTCOMES:
                from opentelemetry.trace import Status, StatusCode

                self.span.set_status(Status(StatusCode.ERROR, reason or outcome))
            self.span.end()
            self.span = None


def traced_call(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorates ``with_retries``: each named storage call of a traced job becomes a span (get job, fetch
    input, store result, mark succeeded ...). Outside a traced job (heartbeat housekeeping) it adds none."""

    @functools.wraps(fn)
    def wrapper(ctx: Any, call: Callable[..., T], *args: Any, what: str = "", **options: Any) -> T:
        if not telemetry.enabled():
            return fn(ctx, call, *args, what=what, **options)
        with telemetry.child_span(what or getattr(call, "__name__", "storage call")):
            return fn(ctx, call, *args, what=what, **options)

    return wrapper


# ----------------------------------------------------------------------------------------- process set-up

_task_tokens: dict[str, Token[dict[str, Any] | None]] = {}


def setup_process(settings: WorkerSettings) -> None:
    """``worker_process_init``: tracing (when configured) and the per-task log context."""
    if telemetry.configure_tracing(settings, "diffbir-worker"):
        instrument_celery()
    signals.task_prerun.connect(_bind_task, weak=False)
    signals.task_postrun.connect(_unbind_task, weak=False)


def instrument_celery() -> None:
    """The Celery consumer span of each delivery, continuing the trace the API put in the message headers."""
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    instrumentor = CeleryInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=telemetry.provider())


def _bind_task(task_id: str | None = None, args: Any = None, **_: Any) -> None:
    job_id = args[0] if args and isinstance(args[0], str) else None
    if task_id is not None:
        _task_tokens[task_id] = push_context(job_id=job_id, task_id=task_id)


def _unbind_task(task_id: str | None = None, **_: Any) -> None:
    token = _task_tokens.pop(task_id, None) if task_id is not None else None
    if token is not None:
        pop_context(token)
