"""OpenAPI of the routes: typed responses, headers, examples and the finishing touches FastAPI cannot express.

Routes return plain ``Response``s (the status route serves stored bytes as they are), so their documents are
declared here, from the models of ``service.schemas``. The request bodies are parsed by ``service.uploads`` /
``service.image_input`` (streaming, with size caps), so their schemas are declared here too, from
``RestoreParams`` itself, and docs and validation cannot drift. ``finish_schema`` runs once, when the schema
is first built: it adds what decorators cannot (examples with null fields, which FastAPI's encoder drops; the
``job_id`` pattern, checked in the routes so a bad id costs nothing; problem media types; no 422 where a
route cannot answer it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_LATEST

from common.formats import CONTENT_TYPES
from common.jobs import JOB_ID_PATTERN
from common.params import RestoreParams
from common.progress_events import PROGRESS_EVENT, STATUS_EVENT
from service.problems import PROBLEM_JSON
from service.schemas import (
    Health,
    JobDocument,
    JobPage,
    Problem,
    Readiness,
    RestoreJsonBody,
    multipart_schema,
)

JOB_ID = "j_3kq9T0bq1yZ6rV0m4sXc2w"
_BASE = "https://api.example.com"
EXAMPLE_JOB: dict[str, Any] = {
    "id": JOB_ID,
    "status": "running",
    "progress": {"stage": "sampler", "step": 12, "total": 50, "fraction": 0.24},
    "params": RestoreParams(seed=123).model_dump(mode="json"),
    "input": {
        "width": 128,
        "height": 96,
        "format": "jpeg",
        "bytes": 20480,
        "conversions": ["exif_transpose"],
    },
    "created_at": "2026-01-01T12:00:00Z",
    "started_at": "2026-01-01T12:00:01Z",
    "finished_at": None,
    "timings": {},
    "error": None,
    "attempts": 1,
    "result": None,
    "urls": {
        "get": f"{_BASE}/v1/jobs/{JOB_ID}",
        "cancel": f"{_BASE}/v1/jobs/{JOB_ID}/cancel",
        "result": f"{_BASE}/v1/jobs/{JOB_ID}/result",
        "events": f"{_BASE}/v1/jobs/{JOB_ID}/events",
    },
    "expires_at": "2026-01-08T12:00:00Z",
}
EXAMPLE_QUEUED = {**EXAMPLE_JOB, "status": "queued", "progress": None, "started_at": None, "attempts": 0}
EXAMPLE_SUCCEEDED = {
    **EXAMPLE_JOB,
    "status": "succeeded",
    "progress": {"stage": "done", "step": 50, "total": 50, "fraction": 1.0},
    "finished_at": "2026-01-01T12:00:09Z",
    "timings": {"load_input": 0.01, "model_total": 7.9, "total": 8.1},
    "result": {
        "url": f"{_BASE}/v1/jobs/{JOB_ID}/result",
        "content_type": "image/png",
        "width": 512,
        "height": 384,
        "bytes": 402112,
    },
    "expires_at": "2026-01-08T12:00:09Z",
}
EXAMPLE_CANCELED = {
    **EXAMPLE_QUEUED,
    "status": "canceled",
    "finished_at": "2026-01-01T12:00:01Z",
    "error": {"code": "canceled", "message": "canceled by the client before it started"},
}


def _header(description: str, schema_type: str = "string") -> dict[str, Any]:
    return {"description": description, "schema": {"type": schema_type}}


RETRY_AFTER = {"Retry-After": _header("Seconds to wait before retrying", "integer")}
# The key's submit rate (service.quotas; IETF draft RateLimit fields), when a rate limit is configured.
RATE_LIMIT_HEADERS = {
    "RateLimit-Limit": _header("Submissions allowed per window", "integer"),
    "RateLimit-Remaining": _header("What is left of it", "integer"),
    "RateLimit-Reset": _header("Seconds until the window frees a submission", "integer"),
    "RateLimit-Policy": _header("The policy, e.g. `60;w=60`"),
}
JOB_LOCATION = {"Location": _header("The job's URL (absolute)")}


def _problem(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """A problem response; ``finish_schema`` moves its model under ``application/problem+json``."""
    out: dict[str, Any] = {"description": description, "model": Problem}
    if headers:
        out["headers"] = headers
    return out


def _job(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "model": JobDocument}
    if headers:
        out["headers"] = headers
    return out


UNAUTHORIZED = {
    401: _problem(
        "Missing or invalid API key",
        {"WWW-Authenticate": _header('The scheme to use: `Bearer realm="diffbir"`')},
    )
}
NOT_FOUND = {404: _problem("No such job (or not yours, or expired)")}
UNAVAILABLE = {503: _problem("Redis, the queue or storage is down; retry after Retry-After", RETRY_AFTER)}

_SUBMIT_HEADERS = {
    **JOB_LOCATION,
    "Idempotent-Replayed": _header("`true` when an earlier request with this Idempotency-Key made the job"),
    "Preference-Applied": _header("`wait=N` when the request's `Prefer: wait=N` was honoured"),
    **RATE_LIMIT_HEADERS,
}

SUBMIT: dict[str, Any] = {
    "operation_id": "submit_job",
    "openapi_extra": {
        "parameters": [
            {
                "name": "Prefer",
                "in": "header",
                "required": False,
                "description": "`wait=N` (N <= 60): answer when the job finishes or after N seconds.",
                "schema": {"type": "string"},  # other preferences are ignored (RFC 7240), so any value goes
            }
        ],
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": multipart_schema(),
                    "encoding": {"image": {"contentType": ", ".join(CONTENT_TYPES.values())}},
                },
                "application/json": {"schema": {"$ref": "#/components/schemas/RestoreJsonBody"}},
            },
        },
    },
    "responses": {
        201: _job("Finished within `Prefer: wait=N`: the final job document", _SUBMIT_HEADERS),
        202: _job("Accepted (still queued or running); `Location` points at the job", _SUBMIT_HEADERS),
        400: _problem("Malformed multipart or JSON body, or Content-Length; body cut short"),
        **UNAUTHORIZED,
        408: _problem("The body did not arrive within DIFFBIR_UPLOAD_TIMEOUT_S"),
        409: _problem("Same Idempotency-Key still in flight; retry after Retry-After", RETRY_AFTER),
        413: _problem("Image (or body) too large"),
        415: _problem("Body neither multipart nor JSON, or the image is not PNG/JPEG/WebP"),
        422: _problem("Invalid image, image URL or parameters"),
        429: _problem(
            "Queue full (`queue_full`), or this key's quota: too many active jobs (`active_jobs_limit`) or "
            "submissions (`rate_limited`); see Retry-After and RateLimit-*",
            {**RETRY_AFTER, **RATE_LIMIT_HEADERS},
        ),
        **UNAVAILABLE,
    },
}

GET_JOB: dict[str, Any] = {
    "operation_id": "get_job",
    "responses": {200: _job("The job document"), **UNAUTHORIZED, **NOT_FOUND, **UNAVAILABLE},
}

GET_RESULT: dict[str, Any] = {
    "operation_id": "get_job_result",
    "responses": {
        200: {
            "description": "The restored image",
            "content": {
                t: {"schema": {"type": "string", "format": "binary"}} for t in CONTENT_TYPES.values()
            },
        },
        307: {
            "description": "Redirect to a presigned object-storage URL (S3 backend)",
            "headers": {"Location": _header("The presigned URL")},
        },
        **UNAUTHORIZED,
        **NOT_FOUND,
        409: _problem("Not finished (or failed/canceled); `job_status` says where it is"),
        **UNAVAILABLE,
    },
}

_CANCEL_RESPONSES: dict[int | str, Any] = {
    200: _job("Canceled (it was still queued and will never run)"),
    202: _job("Cancel requested; the running job stops at its next step"),
    **UNAUTHORIZED,
    **NOT_FOUND,
    409: _problem("Already finished"),
    **UNAVAILABLE,
}
CANCEL: dict[str, Any] = {"operation_id": "cancel_job", "responses": _CANCEL_RESPONSES}
DELETE: dict[str, Any] = {"operation_id": "delete_job", "responses": _CANCEL_RESPONSES}

HEALTHZ: dict[str, Any] = {"operation_id": "healthz", "responses": {200: {"model": Health}}}
READYZ: dict[str, Any] = {
    "operation_id": "readyz",
    "responses": {
        200: {"description": "Ready", "model": Readiness},
        503: _problem("Not ready: Redis down or no fresh worker heartbeat", RETRY_AFTER),
    },
}
METRICS: dict[str, Any] = {
    "operation_id": "metrics",
    "responses": {
        200: {
            "description": "Prometheus text exposition format",
            "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
        }
    },
}

# --- GET /v1/jobs and GET /v1/jobs/{id}/events (service.job_list, service.events)

_CURSOR = "MTc2NzI2ODgwMDAwMDAwMDpqXzNrcTlUMGJxMXlaNnJWMG00c1hjMnc"
EXAMPLE_PAGE = {"jobs": [EXAMPLE_JOB], "next_cursor": _CURSOR, "next": f"/v1/jobs?limit=20&cursor={_CURSOR}"}

LIST_JOBS: dict[str, Any] = {
    "operation_id": "list_jobs",
    "responses": {
        200: {
            "description": "A page of job documents, newest first. `next_cursor` (also in `next` and a "
            "`Link: rel=next` header) fetches the following page; null on the last one. A page may hold "
            "fewer jobs than `limit` when a `status` filter matched little: go on while `next_cursor` is "
            "set.",
            "model": JobPage,
            "headers": {"Link": _header('`<next>; rel="next"` while there is a following page')},
        },
        **UNAUTHORIZED,
        422: _problem("A bad limit, status or cursor"),
        **UNAVAILABLE,
    },
}

# One event of the stream (the schema applies per event): its name, its id and the job document as data.
SSE_EVENT = {
    "type": "object",
    "required": ["event", "id", "data"],
    "properties": {
        "event": {"type": "string", "enum": [STATUS_EVENT, PROGRESS_EVENT]},
        "id": {"type": "string", "description": "Stream id; send it back as Last-Event-ID to resume."},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {"$ref": "#/components/schemas/JobDocument"},
        },
    },
}
EVENTS: dict[str, Any] = {
    "operation_id": "job_events",
    "responses": {
        200: {
            "description": "`text/event-stream`. First event `status` (the job now), then `status` and "
            "`progress` events as they happen, each with the job document (`JobDocument`) as `data` and an "
            "`id` to resume from (`Last-Event-ID`); `: ping` comments keep the connection alive. The stream "
            "ends after the event whose job status is succeeded, failed or canceled.",
            "content": {"text/event-stream": {"schema": SSE_EVENT}},
        },
        **UNAUTHORIZED,
        **NOT_FOUND,
        503: _problem("Redis unavailable, or too many open streams; retry after Retry-After", RETRY_AFTER),
    },
}
EXAMPLE_EVENTS = (
    'event: progress\nid: 1767268800000-3\ndata: {"id": "j_...", "status": "running", "progress": '
    '{"stage": "sampler", "step": 12, "total": 50, "fraction": 0.24}, ...}\n\n'
)


# Examples by (operationId, status), set after FastAPI's encoder (which drops None values) has run.
EXAMPLES: dict[tuple[str, str], Any] = {
    ("submit_job", "201"): EXAMPLE_SUCCEEDED,
    ("submit_job", "202"): EXAMPLE_QUEUED,
    ("get_job", "200"): EXAMPLE_JOB,
    ("cancel_job", "200"): EXAMPLE_CANCELED,
    ("cancel_job", "202"): EXAMPLE_JOB,
    ("delete_job", "200"): EXAMPLE_CANCELED,
    ("delete_job", "202"): EXAMPLE_JOB,
    ("list_jobs", "200"): EXAMPLE_PAGE,
    ("job_events", "200"): EXAMPLE_EVENTS,
}
# Links from a submission's answer to the operations on its job (clients and stateful fuzzing follow them).
_JOB_LINKS = {
    name: {"operationId": op_id, "parameters": {"job_id": "$response.body#/id"}}
    for name, op_id in (
        ("GetJob", "get_job"),
        ("GetJobResult", "get_job_result"),
        ("CancelJob", "cancel_job"),
        ("DeleteJob", "delete_job"),
    )
}
# Operations that may answer 422 (FastAPI adds it to every operation with parameters).
MAY_ANSWER_422 = {"submit_job", "list_jobs", "job_events"}


def _problem_example(status: str, code: str) -> dict[str, Any]:
    return {
        "type": f"urn:diffbir:problem:{code}",
        "title": "...",
        "status": int(status),
        "detail": "...",
        "code": code,
        "instance": "/v1/...",
    }


_CODE_OF_STATUS = {
    "400": "bad_request",
    "401": "unauthorized",
    "404": "not_found",
    "408": "request_timeout",
    "409": "conflict",
    "413": "payload_too_large",
    "415": "unsupported_media_type",
    "422": "validation_error",
    "429": "queue_full",
    "503": "unavailable",
}


def finish_schema(schema: dict[str, Any], *, bearer_auth: bool) -> dict[str, Any]:
    """Complete the generated schema (see the module docstring). Idempotent; runs once per app."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.setdefault("RestoreJsonBody", _component(RestoreJsonBody, components))
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            op_id = operation.get("operationId", "")
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "path" and parameter["name"] == "job_id":
                    parameter["schema"]["pattern"] = JOB_ID_PATTERN
            responses = operation.get("responses", {})
            if "422" in responses and op_id not in MAY_ANSWER_422:
                del responses["422"]
            for status, response in responses.items():
                content = response.get("content", {})
                if status.startswith(("4", "5")) and "application/json" in content:
                    media = content.pop("application/json")
                    # FastAPI's own 422 describes its validation error; ours answers a problem document.
                    media["schema"] = {"$ref": "#/components/schemas/Problem"}
                    media["example"] = _problem_example(status, _CODE_OF_STATUS.get(status, "internal"))
                    content[PROBLEM_JSON] = media
                elif (op_id, status) in EXAMPLES and content:
                    next(iter(content.values()))["example"] = EXAMPLES[op_id, status]
                if op_id == "submit_job" and status in ("201", "202"):
                    response["links"] = _JOB_LINKS
                if not content:
                    response.pop("content", None)
            ok = responses.get("200", {}).get("content", {})
            if len(ok) > 1 and not ok.get("application/json", {"schema": 1}).get("schema"):
                del ok["application/json"]  # FastAPI's default JSON media type next to the declared ones
            if bearer_auth and path.startswith("/v1/"):
                operation["security"] = [{"bearer": []}]
    text = json.dumps(schema)
    for unused in ("HTTPValidationError", "ValidationError"):
        if f'"#/components/schemas/{unused}"' not in text:
            components.pop(unused, None)
    if bearer_auth:
        schema["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "An API key"}
        }
    return schema


def _component(model: type[Any], components: dict[str, Any]) -> dict[str, Any]:
    """``model``'s JSON schema with its nested models as shared components (as FastAPI writes them)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, definition in schema.pop("$defs", {}).items():
        components.setdefault(name, definition)
    return schema


def install(app: FastAPI, *, bearer_auth: bool) -> None:
    """Make ``app.openapi`` build the finished schema once and cache it."""
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = finish_schema(build(), bearer_auth=bearer_auth)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
