"""OpenAPI descriptions and examples for the routes (kept out of routes.py so the routes stay readable).

The upload body is parsed by ``service.uploads`` (streaming, with a size cap), so FastAPI cannot infer its
schema; it is declared here from ``RestoreParams``'s own JSON schema so docs and validation never drift.
"""

from __future__ import annotations

from typing import Any

from common.formats import CONTENT_TYPES
from common.params import RestoreParams

JOB_ID = "j_3kq9T0bq1yZ6rV0m4sXc2w"
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
}


def _problem(code: str, status: int, detail: str) -> dict[str, Any]:
    return {
        "content": {
            "application/problem+json": {
                "example": {
                    "type": f"urn:diffbir:problem:{code}",
                    "title": "...",
                    "status": status,
                    "detail": detail,
                    "code": code,
                }
            }
        }
    }


def _job(description: str, example: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"example": example or EXAMPLE_JOB}}}


_params_schema = RestoreParams.model_json_schema()
_upload_schema = {
    "type": "object",
    "required": ["image"],
    "properties": {
        "image": {"type": "string", "format": "binary", "description": "PNG, JPEG or WebP (static)"},
        **_params_schema["properties"],
    },
}

_UNAUTHORIZED = {401: {"description": "Missing or invalid API key", **_problem("unauthorized", 401, "...")}}
_NOT_FOUND = {404: {"description": "No such job (or not yours)", **_problem("not_found", 404, "no job")}}
_UNAVAILABLE = {
    503: {
        "description": "Redis/queue/storage down, or (submit) too many uploads in progress; see Retry-After",
        **_problem("unavailable", 503, "the job store (Redis) is unavailable"),
    }
}

SUBMIT: dict[str, Any] = {
    "openapi_extra": {
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": _upload_schema}}},
    },
    "responses": {
        202: _job(
            "Accepted; `Location` points at the job", {**EXAMPLE_JOB, "status": "queued", "progress": None}
        ),
        400: {
            "description": "Malformed multipart body or Content-Length, too many parts, oversized field",
            **_problem("bad_request", 400, "malformed multipart body"),
        },
        **_UNAUTHORIZED,
        408: {
            "description": "The upload did not arrive within DIFFBIR_UPLOAD_TIMEOUT_S",
            **_problem("request_timeout", 408, "the upload did not arrive within 120s"),
        },
        409: {
            "description": "Same Idempotency-Key still in flight",
            **_problem("idempotency_in_progress", 409, ""),
        },
        413: {
            "description": "Upload too large",
            **_problem("payload_too_large", 413, "at most 20971520 bytes"),
        },
        415: {
            "description": "Not PNG/JPEG/WebP",
            **_problem("unsupported_media_type", 415, "gif images ..."),
        },
        422: {"description": "Invalid image or parameters", **_problem("invalid_image", 422, "truncated")},
        429: {
            "description": "Queue full (`queue_full`), or this key's quota: too many active jobs "
            "(`active_jobs_limit`) or submissions (`rate_limited`); see Retry-After and RateLimit-*",
            **_problem("queue_full", 429, "retry later"),
        },
        **_UNAVAILABLE,
    },
}

GET_JOB: dict[str, Any] = {
    "responses": {200: _job("The job document"), **_UNAUTHORIZED, **_NOT_FOUND, **_UNAVAILABLE}
}

GET_RESULT: dict[str, Any] = {
    "response_class": None,
    "responses": {
        200: {
            "description": "The restored image",
            "content": {content_type: {} for content_type in CONTENT_TYPES.values()},
        },
        307: {"description": "Redirect to a presigned object-storage URL (S3 backend)"},
        **_UNAUTHORIZED,
        **_NOT_FOUND,
        409: {
            "description": "Not finished (or failed/canceled)",
            **_problem("job_not_finished", 409, "running"),
        },
        **_UNAVAILABLE,
    },
}
del GET_RESULT["response_class"]

CANCEL: dict[str, Any] = {
    "responses": {
        200: _job("Canceled (it was still queued and will never run)", {**EXAMPLE_JOB, "status": "canceled"}),
        202: _job("Cancel requested; the running job stops at its next step"),
        **_UNAUTHORIZED,
        **_NOT_FOUND,
        409: {"description": "Already finished", **_problem("invalid_transition", 409, "already succeeded")},
        **_UNAVAILABLE,
    }
}

READYZ: dict[str, Any] = {
    "responses": {
        200: {
            "content": {
                "application/json": {
                    "example": {"status": "ready", "redis": "ok", "worker_heartbeat_age_s": 2.1}
                }
            }
        },
        503: {"description": "Not ready", **_problem("unavailable", 503, "no worker heartbeat yet")},
    }
}
