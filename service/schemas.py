"""Typed documents of the HTTP API, for OpenAPI: what generated clients parse, and what the schema fuzzer
checks every answer against.

Nothing here is on a hot path: routes serve the stored job bytes as they are and declare these models in
``responses`` only. The vocabularies come from their one source: job fields from ``common.jobs``, request
parameters from ``common.params.RestoreParams`` (a new field there shows up in both request bodies with no
edit here), problem codes from the ``common.errors`` hierarchy.
"""

from __future__ import annotations

import copy
import re
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from common.errors import ServiceError
from common.jobs import JobDocument, JobStatus
from common.params import RestoreParams

IMAGE_FIELD = "image"
# Codes of errors Starlette raises itself (unknown route, wrong method...), by HTTP status.
HTTP_ERROR_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    401: "unauthorized",
    413: "payload_too_large",
}
GENERIC_HTTP_ERROR = "http_error"


def _error_codes() -> list[str]:
    codes: list[str] = []
    pending: list[type[ServiceError]] = [ServiceError]
    while pending:
        cls = pending.pop(0)
        if cls.code not in codes:
            codes.append(cls.code)
        pending.extend(cls.__subclasses__())
    return codes + [c for c in [*HTTP_ERROR_CODES.values(), GENERIC_HTTP_ERROR] if c not in codes]


# Every ``code`` a problem document can carry: the ServiceError hierarchy is the one list (a new error class
# appears here by itself) plus the codes of Starlette's own errors.
ProblemCode = StrEnum("ProblemCode", {code: code for code in _error_codes()})  # type: ignore[misc]


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="Where: the field name (JSON paths have more parts).")
    msg: str


class Problem(BaseModel):
    """An error, as ``application/problem+json`` (RFC 9457), with a stable machine ``code``."""

    model_config = ConfigDict(extra="allow")  # RFC 9457 extension members

    type: str = Field(description="urn:diffbir:problem:<code>", examples=["urn:diffbir:problem:not_found"])
    title: str
    status: int = Field(ge=400, le=599)
    detail: str
    code: ProblemCode
    instance: str | None = Field(None, description="The request path.")
    errors: list[FieldError] | None = Field(None, description="Validation failures (code validation_error).")
    job_status: JobStatus | None = Field(None, description="Where the job is (code job_not_finished).")


class JobPage(BaseModel):
    """A page of ``GET /v1/jobs``, newest first."""

    jobs: list[JobDocument]
    next_cursor: str | None = Field(description="Fetches the following page; null on the last one.")
    next: str | None = Field(description="The URL of the following page (also in `Link: rel=next`).")


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class Readiness(BaseModel):
    status: str = Field(examples=["ready"])
    redis: str = Field(examples=["ok"])
    worker_heartbeat_age_s: float


class RestoreJsonBody(RestoreParams):
    """The JSON submission: the image by URL or data URI, and the same parameters as the form."""

    image: str = Field(
        pattern=r"^(https?://|data:)",
        description="An https URL the API downloads the image from (public hosts only), or a data URI "
        "`data:image/<png|jpeg|webp>;base64,...`.",
        examples=["https://example.com/photo.jpg"],
    )


def _form_value_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """One parameter's schema as a form field: a form cannot send null (an absent field is the default),
    so ``anyOf: [X, null]`` becomes X, and a null default is dropped; a list of choices is one
    comma-separated field (``RestoreParams`` splits it), since the upload reader takes each field once."""
    out = copy.deepcopy(schema)
    if out.get("type") == "array":
        choices = "|".join(re.escape(str(v)) for v in out["items"]["enum"])
        item = f" *({choices}) *"
        return {
            "type": "string",
            "pattern": f"^{item}(,{item})*$",
            **{k: out[k] for k in ("title", "description") if k in out},
        }
    branches = out.pop("anyOf", None)
    if branches is not None:
        concrete = [b for b in branches if b.get("type") != "null"]
        if len(concrete) == 1:
            out.update(concrete[0])
        else:
            out["anyOf"] = concrete
    if out.get("default", 0) is None:
        del out["default"]
    return out


def multipart_schema() -> dict[str, Any]:
    """The multipart/form-data body: the image file part and one field per ``RestoreParams`` field."""
    params = RestoreParams.model_json_schema()
    if "$defs" in params:  # a field typed by a nested model cannot be a form field
        raise TypeError("RestoreParams fields must be scalars to be sent as form fields")
    properties = {name: _form_value_schema(s) for name, s in params["properties"].items()}
    return {
        "type": "object",
        "required": [IMAGE_FIELD],
        "properties": {
            IMAGE_FIELD: {"type": "string", "format": "binary", "description": "PNG, JPEG or WebP (static)"},
            **properties,
        },
        "additionalProperties": False,
    }


__all__ = [
    "FieldError",
    "JobDocument",
    "JobPage",
    "Problem",
    "ProblemCode",
    "RestoreJsonBody",
    "multipart_schema",
]
