"""What one job needs on the worker (stores, the pipeline, metrics, bookkeeping), and the seam to the model.

The seam is typed with the model's own types (imported for type checking only, so importing this module never
loads torch): ``RestorePipeline`` is the part of ``DiffBIRPipeline`` the worker calls, ``OptionsFactory``
builds its ``RestoreOptions`` from ``RestoreParams.model_options()``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from common.blobstore import BlobStore
from common.job_store import JobStore
from common.workers import WorkerRegistry
from worker.batching import Batcher
from worker.config import WorkerSettings
from worker.heartbeat import Heartbeat
from worker.lease import LeaseKeeper
from worker.metrics import WorkerMetrics
from worker.notify import WebhookSender
from worker.outbox import OutboxSweeper
from worker.recovery import Ownership

if TYPE_CHECKING:
    import numpy as np

    from model.options import CancelFn, ProgressFn, RestoreOptions, RestoreResult


class RestorePipeline(Protocol):
    """The calls the worker makes on ``model.pipeline.DiffBIRPipeline`` (tests drive a scripted double)."""

    def restore(
        self,
        image: np.ndarray,
        options: RestoreOptions,
        progress: ProgressFn | None = None,
        should_cancel: CancelFn | None = None,
    ) -> RestoreResult: ...

    def restore_batch(
        self,
        images: Sequence[np.ndarray],
        options_list: Sequence[RestoreOptions],
        progresses: Sequence[ProgressFn | None] | None = None,
        cancels: Sequence[CancelFn | None] | None = None,
    ) -> list[RestoreResult | Exception]: ...


# The model's RestoreOptions class (called with keyword arguments from RestoreParams.model_options()).
OptionsFactory = Callable[..., "RestoreOptions"]


@dataclass
class WorkerContext:
    """Everything one job needs; built once per process (``worker.runner``; tests build their own)."""

    settings: WorkerSettings
    store: JobStore
    blobs: BlobStore
    workers: WorkerRegistry
    pipeline: RestorePipeline
    options_factory: OptionsFactory
    metrics: WorkerMetrics
    webhooks: WebhookSender | None = None  # None: this process sends no webhooks (others do)
    heartbeat: Heartbeat | None = None
    batcher: Batcher | None = None  # None: batching off
    ownership: Ownership | None = None  # None: lost jobs wait for the broker's visibility timeout
    lease: LeaseKeeper | None = None  # renews this worker's lease and runs the recovery housekeeping
    outbox: OutboxSweeper | None = None  # republishes queued jobs that lost their broker message
    # Jobs this worker could not finish nor record through a storage outage: handed back once Redis returns.
    hand_back_later: set[str] = field(default_factory=set)
    running: set[str] = field(default_factory=set)  # jobs this process claimed and has not finished
    strays: set[str] = field(default_factory=set)  # held in Redis, not running here, at the last lease tick
    model_load_s: float = 0.0
    exit_process: Callable[[int], None] = os._exit
