"""Process logging for the API and the worker: plain text (the default, for a terminal) or one JSON object per
line (``DIFFBIR_LOG_FORMAT=json``, for a log pipeline), with the job's context on every line.

Context: ``log_context(job_id=..., stage=...)`` binds fields for a block (a contextvar, so concurrent
requests and the worker's threads keep theirs apart); the filter adds them, the process role, the worker id
and, when tracing is on, the current trace and span ids, to every record. Call sites add the event's own
fields with ``extra={"duration_s": ..., "outcome": ...}``. python-json-logger does the JSON.

No secrets: every formatted line, whatever logger wrote it (ours, Celery, kombu, uvicorn, boto), has the
configured secret values (API keys, webhook secret, S3 credentials, the Redis password) and any presigned-URL
signature replaced by ``***`` before it is written. Our own code never logs them in the first place; this is
the net under libraries that print URLs or exception texts.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Any, TextIO
from urllib.parse import unquote, urlsplit

from pydantic import SecretStr
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from common import telemetry
from common.settings import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JSON_FIELDS = "%(levelname)s %(name)s %(message)s"  # plus "time": ISO 8601 UTC with milliseconds
# uvicorn's copy of its message with terminal colour codes: noise in a log pipeline.
_DROPPED = ("color_message", "taskName")
REDACTED = "***"
# Query parameters of presigned URLs (SigV4 and SigV2) that grant access or name the key.
_PRESIGNED = re.compile(
    r"((?:X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|Signature|AWSAccessKeyId)=)[^&\s\"'<>]+",
    re.IGNORECASE,
)
# httpx logs every request's full URL at INFO (httpcore its connection steps at DEBUG): for webhooks that is
# the callback URL, which often carries the receiver's token. common.webhooks logs the host only.
QUIET_LOGGERS = ("httpx", "httpcore")
_MIN_SECRET_CHARS = 4  # shorter "secrets" would blank out ordinary words; validation elsewhere wants more

_context: ContextVar[dict[str, Any] | None] = ContextVar("diffbir_log_context", default=None)


@contextmanager
def log_context(**fields: Any) -> Iterator[dict[str, Any]]:
    """Bind ``fields`` to every log line of this block (nested blocks add to and override the outer ones).

    Yields the bound dict: code further down the same request may add fields to it (``bind``)."""
    merged = {**(_context.get() or {}), **fields}
    token = _context.set(merged)
    try:
        yield merged
    finally:
        _context.reset(token)


def push_context(**fields: Any) -> Token[dict[str, Any] | None]:
    """``log_context`` for a block whose start and end are separate calls (Celery's task signals)."""
    return _context.set({**(_context.get() or {}), **fields})


def pop_context(token: Token[dict[str, Any] | None]) -> None:
    _context.reset(token)


def bind(**fields: Any) -> None:
    """Add fields to the innermost ``log_context`` (no-op outside one)."""
    current = _context.get()
    if current is not None:
        current.update(fields)


def bound() -> dict[str, Any]:
    return dict(_context.get() or {})


class ContextFilter(logging.Filter):
    """Adds the bound context, static fields (process role, worker id) and trace ids to each record."""

    def __init__(self, static: dict[str, Any]):
        super().__init__()
        self.static = static

    def filter(self, record: logging.LogRecord) -> bool:
        fields = {**self.static, **(_context.get() or {})}
        ids = telemetry.current_ids()
        if ids is not None:
            fields["trace_id"], fields["span_id"] = ids
        for name, value in fields.items():
            if not hasattr(record, name):  # an explicit extra= wins
                setattr(record, name, value)
        return True


class Redactor:
    """Replaces known secret values and presigned-URL signatures in a formatted line."""

    def __init__(self, secrets: list[str]):
        # Longest first, so a secret containing another is replaced whole.
        self.secrets = sorted({s for s in secrets if len(s) >= _MIN_SECRET_CHARS}, key=len, reverse=True)

    def __call__(self, line: str) -> str:
        for secret in self.secrets:
            if secret in line:
                line = line.replace(secret, REDACTED)
        if "=" in line:
            line = _PRESIGNED.sub(rf"\g<1>{REDACTED}", line)
        return line


def configured_secrets(settings: Settings) -> list[str]:
    """Every secret value the settings hold (and their URL-encoded forms, as they appear in URLs)."""
    values: list[str] = []
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        items = value if isinstance(value, list) else [value]
        values += [v.get_secret_value() for v in items if isinstance(v, SecretStr)]
        if isinstance(value, str) and "://" in value:
            try:
                password = urlsplit(value).password
            except ValueError:
                password = None
            if password:
                values += [password, unquote(password)]
    return values


class _RedactingText(logging.Formatter):
    def __init__(self, redact: Redactor):
        super().__init__(TEXT_FORMAT)
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(super().format(record))


class _RedactingJson(JsonFormatter):
    def __init__(self, redact: Redactor):
        super().__init__(
            JSON_FIELDS,
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp="time",
            reserved_attrs=[*RESERVED_ATTRS, *_DROPPED],
        )
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(super().format(record))


def make_handler(
    settings: Settings, role: str, stream: TextIO | None = None, **static: Any
) -> logging.Handler:
    """A stream handler in the configured format, with context and redaction."""
    handler = logging.StreamHandler(stream or sys.stderr)
    redact = Redactor(configured_secrets(settings))
    formatter = _RedactingJson(redact) if settings.log_format == "json" else _RedactingText(redact)
    handler.setFormatter(formatter)
    handler.addFilter(ContextFilter({"service": role, **static}))
    return handler


def configure_logging(settings: Settings, role: str, **static: Any) -> None:
    """Replace the root logger's handlers with one in the configured format (``role``: api | worker)."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(make_handler(settings, role, **static))
    root.setLevel(settings.log_level.upper())
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.captureWarnings(True)  # library warnings as log records (JSON too), not raw stderr text
