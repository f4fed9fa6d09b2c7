"""Enqueue -> start latency of the GPU queue, measured against a real worker process.

Starts its own redis-server on a free port and one ``python -m worker`` (tiny preset on CPU unless told
otherwise), then submits jobs the way the API does (input blob + job record + Celery message) one at a time
and reads back when the worker marked each one running. Target: p50 <= 10 ms on an idle worker.

    .venv/bin/python benchmarks/queue_bench.py --jobs 50 [--json out.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.blobstore import RedisBlobStore, input_key  # noqa: E402
from common.job_store import JobStore  # noqa: E402
from common.jobs import InputInfo, Job, new_job_id, utcnow  # noqa: E402
from common.params import RestoreParams  # noqa: E402
from common.queue import enqueue_restore, make_celery  # noqa: E402
from common.settings import Settings  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(workdir: str) -> tuple[subprocess.Popen[bytes], str]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server not found on PATH")
    port = free_port()
    proc = subprocess.Popen(
        [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return proc, url
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def start_worker(url: str, args: argparse.Namespace, log_path: Path) -> subprocess.Popen[bytes]:
    env = dict(
        os.environ,
        DIFFBIR_REDIS_URL=url,
        DIFFBIR_WORKER_PRESET=args.preset,
        DIFFBIR_WORKER_DEVICE=args.device,
        DIFFBIR_WORKER_PRECISION=args.precision,
        DIFFBIR_WORKER_METRICS_PORT="0",
        DIFFBIR_WORKER_HEARTBEAT_INTERVAL_S="0.5",
        DIFFBIR_LOG_LEVEL="WARNING",
        OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"),
    )
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "worker"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )


def wait_ready(
    client: redis.Redis, worker: subprocess.Popen[bytes], timeout_s: float, log_path: Path
) -> None:
    deadline = time.monotonic() + timeout_s
    while client.zcard("diffbir:workers") == 0:
        if worker.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"worker did not become ready:\n{log_path.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = tempfile.mkdtemp(prefix="queue-bench-")
    redis_proc, url = start_redis(workdir)
    log_path = Path(workdir) / "worker.log"
    worker = start_worker(url, args, log_path)
    settings = Settings(redis_url=url)
    client = redis.Redis.from_url(url)
    store, blobs = JobStore(client, settings), RedisBlobStore(client, 3600)
    app = make_celery(settings)
    buf = io.BytesIO()
    Image.new("RGB", (args.size, args.size), (90, 120, 150)).save(buf, "PNG")
    image = buf.getvalue()
    latencies: list[float] = []
    durations: list[float] = []
    try:
        wait_ready(client, worker, args.ready_timeout, log_path)
        for i in range(args.warmup + args.jobs):
            job = Job(
                id=new_job_id(),
                params=RestoreParams(steps=args.steps, upscale=1.0),
                input=InputInfo(width=args.size, height=args.size, format="png"),
                created_at=utcnow(),
            )
            blobs.put(input_key(job.id), image, "image/png")
            store.create(job)
            enqueued = time.time()
            enqueue_restore(app, settings, job.id)
            deadline = time.monotonic() + args.job_timeout
            while True:
                done = store.get(job.id)
                if done is not None and done.status.terminal:
                    break
                if time.monotonic() > deadline or worker.poll() is not None:
                    raise SystemExit(f"job {job.id} did not finish:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.002)
            if done.status.value != "succeeded" or done.started_at is None or done.finished_at is None:
                raise SystemExit(f"job {job.id} ended {done.status}: {done.error}")
            if i >= args.warmup:
                latencies.append(done.started_at.timestamp() - enqueued)
                durations.append((done.finished_at - done.started_at).total_seconds())
    finally:
        app.close()
        worker.terminate()
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
        redis_proc.terminate()
        redis_proc.wait(timeout=10)
        client.close()
        shutil.rmtree(workdir, ignore_errors=True)
    ms = [v * 1000 for v in latencies]
    return {
        "jobs": len(ms),
        "preset": args.preset,
        "device": args.device,
        "image": f"{args.size}x{args.size}",
        "steps": args.steps,
        "enqueue_to_start_ms": {
            "p50": round(percentile(ms, 50), 3),
            "p90": round(percentile(ms, 90), 3),
            "p99": round(percentile(ms, 99), 3),
            "max": round(max(ms), 3),
            "mean": round(statistics.fmean(ms), 3),
        },
        "job_duration_s_p50": round(percentile(durations, 50), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--size", type=int, default=32, help="square input side in pixels")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--preset", default="tiny", choices=["tiny", "full"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--ready-timeout", type=float, default=180)
    parser.add_argument("--job-timeout", type=float, default=120)
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    result = run(args)
    lat = result["enqueue_to_start_ms"]
    print(
        f"queue latency: {result['jobs']} jobs, preset={args.preset} device={args.device} "
        f"image={result['image']} steps={args.steps}"
    )
    print(f"{'metric':<24}{'ms':>10}")
    for name in ("p50", "p90", "p99", "max", "mean"):
        print(f"{'enqueue->start ' + name:<24}{lat[name]:>10.3f}")
    print(f"{'job duration p50 (s)':<24}{result['job_duration_s_p50']:>10.4f}")
    print(f"target p50 <= 10 ms: {'PASS' if lat['p50'] <= 10 else 'FAIL'}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
