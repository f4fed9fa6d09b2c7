"""Worker-only settings layered on the shared ``common.settings.Settings`` (same ``DIFFBIR_`` environment).

Why a subclass: these settings mean nothing to the API, but reading them through the same pydantic-settings
class keeps one source of truth for parsing and validation of the environment.
"""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from typing import Literal

from pydantic import Field, field_validator, model_validator

from common.settings import Settings


class WorkerSettings(Settings):
    # --- The model this worker loads ---
    worker_preset: Literal["full", "tiny"] = "full"
    worker_version: str = "v2"
    weights_dir: str = "weights"
    worker_device: str = "cuda"
    worker_precision: Literal["fp32", "fp16", "bf16"] = "fp16"

    # --- Jobs ---
    task_soft_time_limit_s: int = Field(600, ge=1)
    task_hard_time_limit_s: int = Field(660, ge=1)
    batch_max_size: int = Field(1, ge=1)
    batch_max_wait_s: float = Field(0.05, ge=0)

    # --- The process ---
    worker_heartbeat_interval_s: float = Field(10.0, gt=0)
    worker_id: str = Field("", description="Heartbeat identity; default '<hostname>:<pid>'.")
    worker_metrics_port: int = Field(9101, ge=0, le=65535, description="Prometheus endpoint; 0 = off.")
    worker_metrics_addr: str = "0.0.0.0"
    worker_max_attempts: int = Field(
        3, ge=1, description="Deliveries of one job before it ends failed/worker_lost (a crash loop stops)."
    )
    worker_transient_retries: int = Field(
        5, ge=0, description="Retries of one Redis/S3 call on connection errors."
    )
    worker_transient_backoff_s: float = Field(0.5, ge=0)
    worker_progress_interval_s: float = Field(
        0.2, gt=0, description="Min seconds between progress writes and cancel-flag reads (<= 5/s)."
    )
    worker_lease_ttl_s: float = Field(
        8.0,
        ge=1.0,
        description="A worker renews its lease every quarter of this; a worker silent this long is presumed "
        "dead and its jobs are requeued at the front of the queue (recovery within about this time).",
    )
    worker_outbox_grace_s: float = Field(
        5.0,
        gt=0,
        description="A queued job with no broker message for this long (its API died before publishing, or "
        "the message was lost) is published again.",
    )
    worker_finish_retry_s: float = Field(
        120.0,
        ge=0,
        description="How long a finished job keeps retrying to store its result and status through a "
        "storage outage; past it the job is failed, or handed back to the queue once Redis returns.",
    )
    worker_shutdown_grace_s: float = Field(
        600.0,
        ge=0,
        description="On SIGTERM the worker takes no new job and lets the current one finish for this long, "
        "then hands it back to the front of the queue and exits (0 = hand back at once). Keep it below the "
        "orchestrator's kill timeout (terminationGracePeriodSeconds).",
    )
    worker_webhook_threads: int = Field(2, ge=1, description="Background threads delivering webhooks.")
    worker_compile: bool = Field(
        False,
        description="torch.compile the UNet and ControlNet, run inside the CUDA graphs (1.5x faster steps "
        "on an H200), for the sizes in DIFFBIR_WORKER_COMPILE_SIZES; about a minute of compilation per new "
        "batch shape, cached in TORCHINDUCTOR_CACHE_DIR. On in docker-compose.yml.",
    )
    worker_compile_sizes: list[str] = Field(
        default_factory=lambda: ["512x512"],
        description="Diffusion sizes (HxW px, multiples of 64) that compile uses, as a JSON list; "
        '"all" = every size. Others run uncompiled (still graphed), so an unusual size never waits for a '
        "compilation; 512x512 also covers the windows of tiled images.",
    )
    worker_compile_dynamic_batch: bool = Field(
        True,
        description="Compile the batch axis as symbolic: one compilation for every batch of 2+ rows (CFG, "
        "image batches, tile micro-batches) plus one for batch 1, instead of one per batch size.",
    )
    worker_compile_cache: str = Field(
        "",
        description="torch.compile artifacts file (torch.compiler.save_cache_artifacts), loaded before the "
        "warm-up when present, written after it. Put it on a volume the replicas share (same image and GPU "
        "type) so a new replica skips the compilations. Empty = off.",
    )
    worker_inductor_cache_dir: str = Field(
        "",
        description="TORCHINDUCTOR_CACHE_DIR for this worker (inductor's on-disk kernel and graph caches); "
        "empty = leave the environment's (default: a directory under /tmp).",
    )
    worker_cuda_graphs: bool = Field(
        True,
        description="Replay the sampler's UNet+ControlNet step (and stage 1 / VAE at repeated sizes) as CUDA "
        "graphs: one capture per shape, then one launch per step. CUDA only.",
    )
    worker_warmup: bool = Field(
        False,
        description="Run two 512x512 restores (with and without CFG) before taking jobs: kernel choice, "
        "autotuning, compilation, CUDA graph capture, prompt cache. Always on with compile.",
    )
    broker_restore_interval_s: int = Field(
        10, ge=1, description="How often kombu looks for unacked messages past the visibility timeout."
    )

    @field_validator("worker_compile_sizes")
    @classmethod
    def _check_compile_sizes(cls, sizes: list[str]) -> list[str]:
        for size in sizes:
            if size != "all":
                _parse_size(size)
        return sizes

    def compile_sizes(self) -> list[tuple[int, int]] | None:
        """`worker_compile_sizes` as (H, W) pairs; None = every size."""
        if "all" in self.worker_compile_sizes:
            return None
        return [_parse_size(s) for s in self.worker_compile_sizes]

    @model_validator(mode="after")
    def _check_time_limits(self) -> WorkerSettings:
        if self.task_hard_time_limit_s <= self.task_soft_time_limit_s:
            raise ValueError("task_hard_time_limit_s must be greater than task_soft_time_limit_s")
        if self.broker_visibility_timeout_s <= self.task_hard_time_limit_s:
            # Otherwise Redis redelivers a task that is still running (acks_late) and it runs twice.
            raise ValueError("broker_visibility_timeout_s must be greater than task_hard_time_limit_s")
        return self

    @model_validator(mode="after")
    def _default_worker_id(self) -> WorkerSettings:
        if not self.worker_id:
            # Settings is frozen; this runs during validation, before the freeze applies to callers.
            object.__setattr__(self, "worker_id", f"{socket.gethostname()}:{os.getpid()}")
        return self


def _parse_size(size: str) -> tuple[int, int]:
    h, sep, w = size.lower().partition("x")
    if not sep or not h.strip().isdigit() or not w.strip().isdigit():
        raise ValueError(f'compile size must look like "512x768", got {size!r}')
    height, width = int(h), int(w)
    if height <= 0 or width <= 0 or height % 64 or width % 64:
        raise ValueError(f"compile size must be positive multiples of 64 px, got {size!r}")
    return height, width


@lru_cache(maxsize=1)
def get_worker_settings() -> WorkerSettings:
    return WorkerSettings()
