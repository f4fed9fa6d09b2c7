"""Load the pipeline the worker settings ask for, warm it up, publish what it offers, and give device memory
back after an OOM.

The only worker module that touches torch or ``model.pipeline``, and only inside functions, so that importing
``worker.celery_app`` for its configuration never pulls in the GPU stack.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

import redis

from common import capabilities
from worker.config import WorkerSettings
from worker.context import OptionsFactory, RestorePipeline

if TYPE_CHECKING:
    from model.options import RestoreOptions
    from model.pipeline import DiffBIRPipeline

log = logging.getLogger(__name__)


def load_pipeline(settings: WorkerSettings) -> tuple[DiffBIRPipeline, type[RestoreOptions]]:
    """Build the pipeline from settings (preset, version, weights, device, precision); raises on failure."""
    import torch

    from model.acceleration import Acceleration
    from model.options import RestoreOptions
    from model.pipeline import DiffBIRPipeline

    if settings.worker_inductor_cache_dir:
        # Read by inductor when it first looks for its cache, i.e. at the first compilation (after this).
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = settings.worker_inductor_cache_dir
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
            compile_dynamic_batch=settings.worker_compile_dynamic_batch,
            compile_cache=settings.worker_compile_cache or None,
        ),
    )
    if settings.worker_warmup or settings.worker_compile:
        warm_up(pipeline, RestoreOptions)
        if settings.worker_compile and settings.worker_compile_cache:
            try:
                pipeline.accel.save_compile_cache()
            except OSError:  # a read-only or full volume costs the next replica time, not this one its start
                log.warning(
                    "could not write the compile cache %s", settings.worker_compile_cache, exc_info=True
                )
    return pipeline, RestoreOptions


def warm_up(pipeline: RestorePipeline, options_factory: OptionsFactory) -> float:
    """Two 128 -> 512 px restores before the first job: default settings (CFG: the denoiser runs at batch 2),
    then without CFG (batch 1, the paper's setting), so neither kind of first job pays for kernel selection,
    cuDNN autotuning, torch.compile (about a minute per shape) or the capture of its CUDA graphs; the second
    restore also captures stage 1 and the VAE at this size. Returns seconds."""
    import numpy as np

    started = time.perf_counter()
    image = np.full((128, 128, 3), 127, dtype=np.uint8)
    # cfg named: a version's default may be either (v1 samples without CFG)
    pipeline.restore(image, options_factory(task="sr", upscale=4.0, seed=0, cfg_scale=4.0))
    pipeline.restore(image, options_factory(task="sr", upscale=4.0, seed=0, cfg_scale=1.0))
    seconds = time.perf_counter() - started
    log.info("warm-up restore took %.1fs", seconds)
    return seconds


def publish_capabilities(client: redis.Redis, pipeline: DiffBIRPipeline) -> None:
    """Tell the API what this worker's weights offer (`GET /v1/models`): version, tasks, samplers, the
    defaults it fills in. Best effort: a worker that cannot write it still serves jobs."""
    from model.presets import capabilities as describe

    document = describe(pipeline.version, pipeline.tasks, pipeline.preset)
    try:
        capabilities.publish(client, document)
    except redis.RedisError as exc:
        log.warning("could not publish the capability document of %s: %s", pipeline.version, exc)


def free_device_memory() -> None:
    """After an out-of-memory failure: hand cached CUDA blocks back so the next job can allocate them."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
