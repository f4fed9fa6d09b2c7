"""The one place where errors become ``application/problem+json`` (RFC 9457) responses.

Backing-service outages (Redis, the Celery broker, S3) become 503 with Retry-After instead of 500, so clients
and load balancers retry; the clients reconnect by themselves once the service is back.
"""

from __future__ import annotations

import logging
from typing import Any

import redis.exceptions
from botocore.exceptions import BotoCoreError, ClientError
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError as BrokerError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from common.errors import ServiceError, ServiceUnavailableError, UnprocessableError
from service.schemas import GENERIC_HTTP_ERROR, HTTP_ERROR_CODES

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"


def problem_response(
    status: int,
    code: str,
    title: str,
    detail: str,
    *,
    instance: str = "",
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"urn:diffbir:problem:{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
    }
    if instance:
        body["instance"] = instance
    body.update(extra or {})
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def from_service_error(exc: ServiceError, request: Request) -> JSONResponse:
    return problem_response(
        exc.status,
        exc.code,
        exc.title,
        exc.detail,
        instance=request.url.path,
        headers=exc.headers,
        extra=exc.extra,
    )


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return from_service_error(exc, request)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
    return from_service_error(UnprocessableError("request validation failed", errors=errors), request)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = HTTP_ERROR_CODES.get(exc.status_code, GENERIC_HTTP_ERROR)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request)
    return problem_response(
        exc.status_code,
        code,
        code.replace("_", " ").capitalize(),
        str(exc.detail),
        instance=request.url.path,
        headers=headers,
    )


def _allowed_methods(request: Request) -> str:
    """Every method some route serves on this path. Starlette's 405 names only the first route matching the
    path, but a path may have several (GET and DELETE /v1/jobs/{id} are two routes). Runs on 405s only."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))


async def _backend_down(request: Request, exc: Exception) -> JSONResponse:
    log.warning("backing service unavailable on %s: %s: %s", request.url.path, type(exc).__name__, exc)
    return from_service_error(ServiceUnavailableError(f"{_backend_name(exc)} is unavailable"), request)


def _backend_name(exc: Exception) -> str:
    if isinstance(exc, redis.exceptions.RedisError):
        return "the job store (Redis)"
    if isinstance(exc, BrokerError):
        return "the job queue"
    return "object storage"


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    # Any RedisError, not only connection errors: a failover's READONLY replica or "OOM command not allowed"
    # are outages of the backing service too, and should be retried by clients, not reported as our bug.
    for exc_type in (redis.exceptions.RedisError, BrokerError, BotoCoreError):
        app.add_exception_handler(exc_type, _backend_down)
    app.add_exception_handler(ClientError, _s3_client_error)
    app.add_exception_handler(Exception, _unexpected)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    """A bug: problem+json like every other error, with no exception text (it may hold internals)."""
    # Starlette re-raises it after this answer, so the server logs the traceback; one line here is enough.
    log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path)
    return problem_response(
        500,
        "internal",
        "Internal error",
        "an unexpected error occurred; it has been logged",
        instance=request.url.path,
    )


async def _s3_client_error(request: Request, exc: Exception) -> JSONResponse:
    # S3 refusing us (credentials, missing bucket) is our misconfiguration: report it as unavailable, log it.
    log.error("object storage error on %s: %s", request.url.path, exc)
    return from_service_error(ServiceUnavailableError("object storage refused the request"), request)
