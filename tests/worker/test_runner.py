"""The model-owning process: a worker that cannot load exits loudly; the real tiny pipeline serves jobs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from common.jobs import JobStatus
from common.queue import enqueue_restore, make_celery
from tests.worker.conftest import Harness, sample, worker_settings
from worker import loading, runner
from worker.lifecycle import run_job

ROOT = Path(__file__).resolve().parents[2]


def test_worker_without_weights_exits_nonzero_and_never_heartbeats(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFBIR_")}
    env.update(
        DIFFBIR_REDIS_URL=redis_url,
        DIFFBIR_WORKER_PRESET="full",
        DIFFBIR_WEIGHTS_DIR=str(tmp_path),
        DIFFBIR_WORKER_DEVICE="cpu",
        DIFFBIR_WORKER_PRECISION="fp32",
        DIFFBIR_WORKER_METRICS_PORT="0",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "worker"], cwd=ROOT, env=env, capture_output=True, timeout=120
    )
    assert proc.returncode == runner.EXIT_MODEL_LOAD_FAILED, proc.stderr[-2000:]
    assert b"FATAL: diffbir worker cannot load its model" in proc.stderr
    assert b"WeightsMissingError" in proc.stderr
    assert redis_client.zcard("diffbir:workers") == 0


@pytest.fixture(scope="module")
def real_pipeline() -> Iterator[tuple[object, object]]:
    """The real tiny pipeline (random weights, CPU), loaded once for this module."""
    settings = worker_settings("redis://unused")
    yield loading.load_pipeline(settings)


def test_real_tiny_pipeline_restores_a_job(harness: Harness, real_pipeline: tuple[object, object]) -> None:
    harness.ctx.pipeline, harness.ctx.options_factory = real_pipeline
    job = harness.submit(steps=3, upscale=2, seed=5, fidelity=0.7, sampler="ddim", color_fix="adain")
    assert run_job(harness.ctx, job.id) == "succeeded"
    done = harness.ctx.store.get(job.id)
    assert done is not None and done.result is not None
    assert (done.result.width, done.result.height) == (32, 24)
    for stage in ("stage1", "vae_encode", "sampler", "vae_decode", "postprocess", "model_total"):
        assert done.timings[stage] > 0, stage
    assert (
        sample(harness, "diffbir_worker_sampler_step_duration_seconds_count") >= 2
    )  # one per step after the first


def test_real_tiny_pipeline_batches_jobs(harness: Harness, real_pipeline: tuple[object, object]) -> None:
    harness.ctx = harness.make_ctx(batch_max_size=3, batch_max_wait_s=0.02)
    harness.ctx.pipeline, harness.ctx.options_factory = real_pipeline
    harness.ctx.batcher = runner.make_batcher(harness.ctx.settings, harness.client, harness.ctx.store)
    producer = make_celery(harness.ctx.settings)
    try:
        first = harness.submit(steps=2, seed=1)
        mates = [harness.submit(steps=2, seed=s) for s in (2, 3)]
        for mate in mates:
            enqueue_restore(producer, harness.ctx.settings, mate.id)
    finally:
        producer.close()
    assert run_job(harness.ctx, first.id) == "succeeded"
    assert sample(harness, "diffbir_worker_batch_size_sum") == 3
    for mate in mates:
        done = harness.ctx.store.get(mate.id)
        assert done is not None and done.status is JobStatus.succeeded and done.attempts == 1


def test_importing_the_worker_app_and_task_does_not_load_torch() -> None:
    code = (
        "import sys, importlib, pkgutil, worker; "
        "[importlib.import_module('worker.' + m.name) for m in pkgutil.iter_modules(worker.__path__)]; "
        "assert 'torch' not in sys.modules and 'model.pipeline' not in sys.modules, 'heavy import'; "
        "from worker.celery_app import app; c = app.conf; "
        "assert c.worker_prefetch_multiplier == 1 and c.task_acks_late and c.task_reject_on_worker_lost; "
        "assert c.worker_pool == 'solo' and c.task_default_queue == 'gpu'; "
        "vis = c.broker_transport_options['visibility_timeout']; "
        "assert vis > c.task_time_limit > c.task_soft_time_limit; "
        "assert 'diffbir.restore' in app.tasks"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFBIR_")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
