"""The settings both processes read (Redis, storage, API limits, webhooks, queue), from ``DIFFBIR_*``.

The worker reads these plus its own (``worker.config.WorkerSettings``, a subclass) from the same environment.

Lists (``api_keys``, ``webhook_allow_hosts``) are given as JSON in the environment, e.g.
``DIFFBIR_API_KEYS='["k1","k2"]'``. Secrets are ``SecretStr`` so they never appear in reprs or logs.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DIFFBIR_", extra="ignore", frozen=True)

    # --- Redis (job records, idempotency, heartbeats, Celery broker) ---
    redis_url: str = "redis://localhost:6379/0"
    redis_socket_timeout_s: float = Field(2.0, gt=0, description="Fail fast so a dead Redis becomes a 503.")
    redis_sentinels: list[str] = Field(
        default_factory=list,
        description='Redis Sentinel addresses as a JSON list of "host:port"; when set, the job store, blob '
        "store and Celery broker ask them for the current master of redis_sentinel_master (the database, "
        "username and password still come from redis_url). Empty = connect to redis_url directly.",
    )
    redis_sentinel_master: str = Field("mymaster", description="The master's name the sentinels monitor.")

    # --- Blob storage ---
    storage_backend: Literal["redis", "s3"] = "redis"
    s3_endpoint_url: str | None = None
    s3_bucket: str = "diffbir"
    s3_prefix: str = ""
    s3_region: str = "us-east-1"
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_public_endpoint_url: str | None = Field(
        None, description="Endpoint written into presigned URLs when clients reach S3 by another address."
    )
    s3_create_bucket: bool = False
    presign_ttl_seconds: int = Field(900, ge=1, le=7 * 24 * 3600)

    # --- API ---
    api_keys: list[SecretStr] = Field(default_factory=list, description="Empty list = authentication off.")
    host: str = "0.0.0.0"
    port: int = 8000
    api_workers: int = Field(1, ge=1, description="uvicorn worker processes for `python -m service`.")
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1)
    upload_timeout_s: float = Field(
        120.0,
        gt=0,
        description="The whole upload body must arrive within this time (408 otherwise): a client trickling "
        "bytes would otherwise hold a connection and up to max_upload_bytes of memory indefinitely.",
    )
    max_concurrent_uploads: int = Field(
        32,
        ge=1,
        description="Uploads one API process reads at once (each holds up to max_upload_bytes in memory); "
        "more answer 503 busy with Retry-After.",
    )
    max_input_pixels: int = Field(4096 * 4096, ge=1)
    # 4096x4096 is what the GPU benchmark ran tiled in ~5 GB; the worker's pipeline enforces the same limit.
    max_output_pixels: int = Field(4096 * 4096, ge=1)
    submit_full_decode: bool = Field(
        False,
        description="Decode every pixel at submit (slower); by default the API checks headers and structure "
        "and the worker finds corrupt-but-complete data (the job fails with bad_input).",
    )
    public_base_url: str | None = Field(
        None,
        pattern=r"^https?://[^/?#\s]+(/[^?#\s]*)?$",
        description="Base of the absolute URLs in job documents and webhooks (e.g. https://api.example.com); "
        "unset: taken from each submission's request (Host / X-Forwarded-* through the proxy headers).",
    )
    max_sync_wait_s: int = Field(60, ge=0, le=60, description="Longest `Prefer: wait=N` a submit honours.")
    callback_resolve_timeout_s: float = Field(
        2.0,
        gt=0,
        description="Submit-time DNS check of callback_url (off the event loop); if it takes longer, the URL "
        "is accepted on its syntax and delivery re-checks the resolved address, as it always does.",
    )
    job_ttl_seconds: int = Field(7 * 24 * 3600, ge=60)
    max_queue_depth: int = Field(1000, ge=0, description="Submissions get 429 when the queue is deeper.")
    retry_after_seconds: int = Field(30, ge=1)
    idempotency_ttl_seconds: int = Field(24 * 3600, ge=1)
    worker_heartbeat_max_age_s: float = Field(60.0, gt=0, description="/readyz needs a heartbeat this fresh.")

    # --- Per-key quotas (common.quotas); with auth off every caller shares the anonymous owner's ---
    max_active_jobs_per_key: int = Field(
        100, ge=0, description="Queued + running jobs one API key may have; more get 429. 0 = no cap."
    )
    submit_rate_per_key: int = Field(
        120, ge=0, description="Submissions one API key may make per submit_rate_window_s; 0 = no limit."
    )
    submit_rate_window_s: int = Field(60, ge=1, description="The sliding window of submit_rate_per_key.")

    # --- Live progress (GET /v1/jobs/{id}/events) ---
    max_event_streams: int = Field(
        1000, ge=1, description="Event streams one API process serves at once (each holds a Redis connection)"
    )
    event_stream_ping_s: float = Field(15.0, gt=0, description="Keep-alive comment interval of streams.")

    # --- Webhooks ---
    webhook_secret: SecretStr | None = None
    webhook_allow_hosts: list[str] = Field(
        default_factory=list, description="Hostnames allowed as callback targets; empty = any public host."
    )
    webhook_allow_private: bool = Field(False, description="Allow loopback/private targets (tests only).")
    webhook_timeout_s: float = Field(5.0, gt=0)
    webhook_max_retries: int = Field(5, ge=0)
    webhook_backoff_s: float = Field(1.0, ge=0)
    webhook_lease_s: float = Field(
        30.0,
        gt=0,
        description="A delivery attempt owns its webhook this long; past it (its process died) another "
        "process retries it. Must exceed webhook_timeout_s.",
    )
    webhook_poll_interval_s: float = Field(0.5, gt=0, description="How often idle senders look for work.")

    # --- Image URLs (JSON submissions with "image": "https://...") ---
    image_fetch_timeout_s: float = Field(20.0, gt=0, description="The whole download, DNS included.")
    image_fetch_allow_hosts: list[str] = Field(
        default_factory=list,
        description="Host names, IPs or CIDRs allowed as image URLs; empty = any public host. Listed hosts "
        "may resolve to private addresses (as for webhooks).",
    )
    image_fetch_allow_http: bool = Field(False, description="Also accept http:// image URLs (tests only).")

    # --- Queue (send side and worker share these) ---
    queue_name: str = "gpu"
    task_name: str = "diffbir.restore"
    broker_visibility_timeout_s: int = Field(3600, ge=1, description="Must exceed the task hard time limit.")

    # --- Observability (docs/operations.md, "Traces and logs") ---
    log_format: Literal["text", "json"] = Field(
        "text",
        description="`text` for a terminal; `json`: one JSON object per line with job_id, request_id, "
        "trace_id, worker_id, stage, duration and outcome fields, for a log pipeline.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO", description="Root log level of the API and the worker (case-insensitive)."
    )
    otlp_endpoint: str | None = Field(
        None,
        description="OTLP/HTTP collector base URL (e.g. `http://jaeger:4318`): traces are exported there. "
        "The standard OTEL_EXPORTER_OTLP_ENDPOINT works too; unset = tracing off, at no cost.",
    )

    # Worker-only settings (model, device, batching, time limits) live in worker.config.WorkerSettings.

    @model_validator(mode="after")
    def _check_webhook_lease(self) -> Settings:
        if self.webhook_lease_s <= self.webhook_timeout_s:
            # Otherwise a slow but live attempt loses its lease and the webhook is sent twice at once.
            raise ValueError("webhook_lease_s must be greater than webhook_timeout_s")
        return self

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, level: object) -> object:
        return level.upper() if isinstance(level, str) else level

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys)

    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """``redis_sentinels`` as (host, port) pairs."""
        addresses = []
        for item in self.redis_sentinels:
            host, sep, port = item.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f'a sentinel address must look like "host:26379", got {item!r}')
            addresses.append((host.strip("[]"), int(port)))
        return addresses

    def broker_url(self) -> str:
        """The Celery broker URL: ``redis_url``, or kombu's ``sentinel://`` list (plus credentials and db)."""
        if not self.redis_sentinels:
            return self.redis_url
        parts = urlsplit(self.redis_url)
        auth = ""
        if parts.password is not None:
            auth = f"{parts.username or ''}:{parts.password}@"
        db = parts.path.lstrip("/") or "0"
        return ";".join(f"sentinel://{auth}{host}:{port}/{db}" for host, port in self.sentinel_addresses())

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # URLs may carry credentials (redis://:password@host); repr()/str() must not print them.
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if isinstance(value, str) and "://" in value else value


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (for logs and reprs)."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    except ValueError:  # unparsable: show nothing rather than a secret
        return "***"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings; tests build their own ``Settings(...)`` instead of mutating this one."""
    return Settings()
