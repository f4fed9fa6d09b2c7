"""The API's request context: a request id on every log line and response, one access line per request in
JSON mode, and the OpenTelemetry FastAPI instrumentation when tracing is on.

Request ids: a client's ``X-Request-ID`` is kept when it is a short token (so a caller's own id joins its
logs), otherwise one is made; either way it comes back in the response header. The access line carries the
route template, status, duration, request id, the job id (path parameter, or the job a submission created)
and, with tracing on, the trace id; never headers or bodies (API keys, uploads).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common import telemetry
from common.logging_setup import log_context
from common.settings import Settings

log = logging.getLogger("service.access")

REQUEST_ID_HEADER = "x-request-id"
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Probes and scrapes: untraced (they would drown the job traces) and, in JSON mode, not access-logged.
UNTRACED = ("/healthz", "/readyz", "/metrics")


def request_id_of(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _CLIENT_ID.fullmatch(text):
                return text
            break
    return uuid.uuid4().hex


class RequestContextMiddleware:
    """Pure ASGI (no extra task per request): binds the request id (and later the job id) for logs."""

    def __init__(self, app: ASGIApp, access_log: bool):
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        header = (REQUEST_ID_HEADER.encode(), request_id.encode())
        status = 500
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        with log_context(request_id=request_id) as context:
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                if self.access_log and scope.get("path") not in UNTRACED:
                    self._log(scope, context, status, time.perf_counter() - start)

    @staticmethod
    def _log(scope: Scope, context: dict[str, Any], status: int, seconds: float) -> None:
        route: Any = scope.get("route")
        job_id = scope.get("path_params", {}).get("job_id") or context.get("job_id")
        extra = {
            "method": scope.get("method", ""),
            "route": getattr(route, "path", None) or "unmatched",
            "status": status,
            "duration_s": round(seconds, 6),
            "outcome": "ok" if status < 400 else "client_error" if status < 500 else "server_error",
        }
        if job_id:
            extra["job_id"] = job_id
        log.info("request", extra=extra)


def install_observability(app: FastAPI, settings: Settings) -> None:
    """Request ids for logs; traces of every /v1 request when an OTLP endpoint is configured."""
    app.add_middleware(RequestContextMiddleware, access_log=settings.log_format == "json")
    if telemetry.configure_tracing(settings, "diffbir-api") or telemetry.enabled():
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(
            app,
            tracer_provider=telemetry.provider(),
            excluded_urls=",".join(UNTRACED),
            # One span per ASGI message would mean one per network chunk of an upload.
            exclude_spans=["receive", "send"],
        )
