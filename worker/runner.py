"""The process that owns the model: load ``DiffBIRPipeline`` once, then serve jobs until shutdown.

torch and ``model`` are imported here lazily (inside functions) so that importing ``worker.celery_app`` for
its configuration never pulls in the GPU stack. A worker that cannot load its model logs why and exits with
``EXIT_MODEL_LOAD_FAILED`` before consuming any job and before its first heartbeat, so /readyz never counts it
and an orchestrator sees a crash loop instead of a worker that fails every job.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from common.blobstore import BlobStore, make_blobstore
from common.jobs import JobStore, connect
from worker.batching import Batcher
from worker.config import WorkerSettings, get_worker_settings
from worker.heartbeat import Heartbeat
from worker.metrics import WorkerMetrics, get_metrics
from worker.recovery import Ownership

log = logging.getLogger(__name__)

EXIT_MODEL_LOAD_FAILED = 3
EXIT_HARD_TIME_LIMIT = 4


@dataclass
class WorkerContext:
    """Everything one job needs; built once per process (tests build their own)."""

    settings: WorkerSettings
    store: JobStore
    blobs: BlobStore
    pipeline: Any  # model.pipeline.DiffBIRPipeline (typed loosely: model is imported lazily)
    options_factory: Callable[..., Any]  # model.options.RestoreOptions
    metrics: WorkerMetrics
    webhook_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=2, thread_name_prefix="diffbir-webhook")
    )
    heartbeat: Heartbeat | None = None
    batcher: Batcher | None = None  # None: batching off
    ownership: Ownership | None = None  # None: lost jobs wait for the broker's visibility timeout
    model_load_s: float = 0.0
    exit_process: Callable[[int], None] = os._exit


_context: WorkerContext | None = None


def load_pipeline(settings: WorkerSettings) -> tuple[Any, Callable[..., Any]]:
    """Build the pipeline from settings (preset, version, weights, device, precision); raises on failure."""
    import torch

    from model.acceleration import Acceleration
    from model.options import RestoreOptions
    from model.pipeline import DiffBIRPipeline

    if settings.worker_device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"DIFFBIR_WORKER_DEVICE={settings.worker_device} but CUDA is not available")
    pipeline = DiffBIRPipeline.from_preset(
        preset=settings.worker_preset,
        version=settings.worker_version,
        weights_dir=settings.weights_dir,
        device=settings.worker_device,
        precision=settings.worker_precision,
        max_pixels=max(settings.max_input_pixels, settings.max_output_pixels),
        acceleration=Acceleration(
            compile=settings.worker_compile,
            compile_sizes=settings.compile_sizes(),
            cuda_graphs=None if settings.worker_cuda_graphs else False,  # None: on when the device is CUDA
        ),
    )
    if settings.worker_warmup or settings.worker_compile:
        warm_up(pipeline, RestoreOptions)
    return pipeline, RestoreOptions


def warm_up(pipeline: Any, options_factory: Callable[..., Any]) -> float:
    """Two 128 -> 512 px restores before the first job: default settings (CFG: the denoiser runs at batch 2),
    then without CFG (batch 1, the paper's setting), so neither kind of first job pays for kernel selection,
    cuDNN autotuning, torch.compile (about a minute per shape) or the capture of its CUDA graphs; the second
    restore also captures stage 1 and the VAE at this size. Returns seconds."""
    import numpy as np

    started = time.perf_counter()
    image = np.full((128, 128, 3), 127, dtype=np.uint8)
    pipeline.restore(image, options_factory(task="sr", upscale=4.0, seed=0))
    pipeline.restore(image, options_factory(task="sr", upscale=4.0, seed=0, cfg_scale=1.0))
    seconds = time.perf_counter() - started
    log.info("warm-up restore took %.1fs", seconds)
    return seconds


def make_batcher(settings: WorkerSettings, client: Any, store: JobStore) -> Batcher | None:
    if settings.batch_max_size <= 1:
        return None
    return Batcher(
        client,
        store,
        settings.worker_id,
        settings.queue_name,
        settings.task_name,
        settings.batch_max_size,
        settings.batch_max_wait_s,
    )


def make_ownership(settings: WorkerSettings, client: Any, store: JobStore) -> Ownership:
    from common.queue import enqueue_restore
    from worker.celery_app import app

    return Ownership(
        client,
        store,
        settings.worker_id,
        settings.job_ttl_seconds,
        publish=lambda job_id: enqueue_restore(app, settings, job_id),
    )


def build_context(settings: WorkerSettings, metrics: WorkerMetrics | None = None) -> WorkerContext:
    metrics = metrics or get_metrics()
    started = time.perf_counter()
    pipeline, options_factory = load_pipeline(settings)
    load_s = time.perf_counter() - started
    metrics.model_load.set(load_s)
    if getattr(pipeline, "graphs", None) is not None:
        metrics.watch_graphs(pipeline.graphs)
    client = connect(settings)
    store = JobStore(client, settings)
    return WorkerContext(
        settings=settings,
        store=store,
        blobs=make_blobstore(settings, client),
        batcher=make_batcher(settings, client, store),
        ownership=make_ownership(settings, client, store),
        pipeline=pipeline,
        options_factory=options_factory,
        metrics=metrics,
        webhook_pool=ThreadPoolExecutor(
            settings.worker_webhook_threads, thread_name_prefix="diffbir-webhook"
        ),
        model_load_s=load_s,
    )


def start_process(settings: WorkerSettings | None = None) -> WorkerContext:
    """worker_process_init: metrics endpoint, then the model. Exits the process if the model cannot load."""
    global _context
    if _context is not None:
        return _context
    settings = settings or get_worker_settings()
    metrics = get_metrics()
    metrics.serve(settings.worker_metrics_port, settings.worker_metrics_addr)
    log.info(
        "loading DiffBIR pipeline preset=%s version=%s device=%s precision=%s weights=%s",
        settings.worker_preset,
        settings.worker_version,
        settings.worker_device,
        settings.worker_precision,
        settings.weights_dir,
    )
    try:
        _context = build_context(settings, metrics)
    except BaseException as exc:
        log.critical("worker cannot load its model, exiting: %s", exc, exc_info=True)
        print(
            f"FATAL: diffbir worker cannot load its model: {type(exc).__name__}: {exc}",
            file=sys.stderr,
            flush=True,
        )
        logging.shutdown()
        os._exit(EXIT_MODEL_LOAD_FAILED)
    log.info("pipeline loaded in %.1fs", _context.model_load_s)
    return _context


def mark_ready() -> None:
    """worker_ready: the model is loaded and the consumer is up; start heartbeating."""
    ctx = context()
    if ctx.heartbeat is None:
        ctx.heartbeat = Heartbeat(
            ctx.store,
            ctx.settings.worker_id,
            ctx.settings.worker_heartbeat_interval_s,
            on_beat=_recover_lost_jobs,
        )
        ctx.heartbeat.start()
        log.info(
            "worker %s ready; heartbeating every %.1fs",
            ctx.settings.worker_id,
            ctx.settings.worker_heartbeat_interval_s,
        )


def _recover_lost_jobs() -> None:
    """Heartbeat housekeeping: requeue the jobs of workers that stopped heartbeating."""
    ctx = _context
    if ctx is None:
        return
    max_age = ctx.settings.worker_heartbeat_max_age_s
    if ctx.ownership is not None:
        ctx.ownership.requeue_from_dead_workers(max_age)
    if ctx.batcher is not None:
        ctx.batcher.recover_dead_workers(max_age)


def shutdown() -> None:
    """worker_shutdown: deregister, and give in-flight webhooks a chance to finish."""
    if _context is None:
        return
    if _context.heartbeat is not None:
        _context.heartbeat.stop()
        _context.heartbeat = None
    _context.webhook_pool.shutdown(wait=True, cancel_futures=False)


def context() -> WorkerContext:
    """The process's context; loads the model on first use (e.g. a task run outside the solo worker)."""
    return _context if _context is not None else start_process()
