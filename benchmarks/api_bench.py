"""API micro-benchmark on loopback: job-status throughput and submit latency.

1. ``GET /v1/jobs/{id}`` throughput vs a bare FastAPI endpoint (``GET /bench/bare``: same app, middleware,
   uvicorn server and run); target: ratio >= 50 %.
2. ``POST /v1/restore`` latency p50/p99, 32 concurrent clients uploading ~256 KB JPEGs; target p99 <= 50 ms.

It starts its own redis-server (throwaway, no persistence) and a uvicorn server per ``--api-workers``
value (default: 1, then 2 worker processes), and never leaves 127.0.0.1. Request counts are bounded by
the flags; the bare and job GETs alternate in rounds so machine noise hits both alike. Besides wall-clock
numbers it reports server (and redis-server) CPU per request, which depends little on other tenants of a
shared machine. The load generator is a minimal keep-alive HTTP/1.1 client on raw asyncio streams
(hand-written on purpose: httpx costs about as much CPU per request as the server, which on a small
machine would measure the client instead of the server).

    .venv/bin/python benchmarks/api_bench.py [--requests 3000] [--api-workers 1 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
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
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

HOST = "127.0.0.1"

if TYPE_CHECKING:
    from fastapi import FastAPI


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


# ------------------------------------------------------------------------------------------ server side


def bench_app() -> FastAPI:
    """The service app plus ``GET /bench/bare``: one app, so both endpoints share the server, the
    middleware and the process config. A factory, so ``--api-workers N`` can start N uvicorn processes."""
    from common.settings import Settings
    from service.app import create_app

    # Queue and per-key limits far above what the benchmark submits (no worker drains its jobs): every
    # check still runs (the per-key quota is its Lua call per submit), none refuses.
    settings = Settings(
        redis_url=os.environ["API_BENCH_REDIS_URL"],
        max_queue_depth=10**9,
        max_upload_bytes=4 * 1024 * 1024,
        max_active_jobs_per_key=10**9,
        submit_rate_per_key=10**9,
    )
    app = create_app(settings)

    @app.get("/bench/bare", include_in_schema=False)
    async def bare() -> dict[str, str]:
        return {"status": "ok"}

    return app


def serve(port: int, workers: int) -> None:
    import uvicorn

    uvicorn.run(
        "benchmarks.api_bench:bench_app",
        factory=True,
        workers=workers,
        host=HOST,
        port=port,
        log_level="warning",
        access_log=False,
    )


# ------------------------------------------------------------------------------------------ load side


class Conn:
    """One keep-alive HTTP/1.1 connection; responses must carry Content-Length (uvicorn's do)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Conn:
        return cls(*await asyncio.open_connection(HOST, port))

    async def request(self, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
        self.writer.write(head + body)
        await self.writer.drain()
        status = int((await self.reader.readline()).split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its live descendants (Linux /proc): server CPU per request is
    stable on a busy machine, where wall-clock throughput mostly measures the other tenants."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return own + sum(cpu_seconds(int(child)) for child in children)


def get_head(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()


async def throughput(port: int, path: str, total: int, concurrency: int) -> float:
    head = get_head(path)
    conns = [await Conn.open(port) for _ in range(concurrency)]
    per_conn = total // concurrency

    async def loop(conn: Conn) -> None:
        for _ in range(per_conn):
            status, _ = await conn.request(head)
            if status != 200:
                raise RuntimeError(f"GET {path} -> {status}")

    start = time.perf_counter()
    await asyncio.gather(*(loop(c) for c in conns))
    elapsed = time.perf_counter() - start
    for c in conns:
        c.close()
    return per_conn * concurrency / elapsed


def jpeg_of_about(target_bytes: int) -> bytes:
    """A noisy photo-like JPEG close to ``target_bytes`` (noise keeps it from compressing away)."""
    from PIL import Image

    side = 256
    while True:
        noise = Image.effect_noise((side, side), 60).convert("RGB")
        gradient = Image.linear_gradient("L").resize((side, side))
        img = Image.merge("RGB", (gradient, noise.getchannel(0), gradient.rotate(90)))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        if buf.tell() >= target_bytes:
            return buf.getvalue()
        side += 16


def multipart_upload(image: bytes) -> tuple[bytes, bytes]:
    boundary = "benchboundary7f3a"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="in.jpg"\r\n'
        f"Content-Type: image/jpeg\r\n\r\n".encode()
        + image
        + f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="steps"\r\n\r\n20\r\n'.encode()
        + f"--{boundary}--\r\n".encode()
    )
    head = (
        f"POST /v1/restore HTTP/1.1\r\nHost: {HOST}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head, body


async def submit_latencies(port: int, image: bytes, concurrency: int, per_client: int) -> list[float]:
    head, body = multipart_upload(image)
    conns = [await Conn.open(port) for _ in range(concurrency)]
    latencies: list[float] = []
    job_ids: list[str] = []

    async def loop(conn: Conn) -> None:
        for _ in range(per_client):
            start = time.perf_counter()
            status, payload = await conn.request(head, body)
            latencies.append(time.perf_counter() - start)
            if status != 202:
                raise RuntimeError(f"submit -> {status}: {payload[:200]!r}")
            job_ids.append(json.loads(payload)["id"])

    await asyncio.gather(*(loop(c) for c in conns))
    for c in conns:
        c.close()
    return latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


async def run_benchmarks(
    port: int, server_pid: int, redis_pid: int, args: argparse.Namespace
) -> dict[str, float]:
    image = jpeg_of_about(args.upload_kb * 1024)
    head, body = multipart_upload(image)
    conn = await Conn.open(port)
    status, payload = await conn.request(head, body)
    assert status == 202, payload
    job_path = f"/v1/jobs/{json.loads(payload)['id']}"
    conn.close()

    load_before = os.getloadavg()[0]
    await throughput(port, "/bench/bare", min(500, args.requests), args.concurrency)  # warm up both paths
    await throughput(port, job_path, min(500, args.requests), args.concurrency)
    bare, jobs, bare_cpu, jobs_cpu, jobs_redis_cpu = [], [], 0.0, 0.0, 0.0
    for _ in range(args.rounds):  # interleaved rounds so machine noise hits both sides alike
        cpu = cpu_seconds(server_pid)
        bare.append(await throughput(port, "/bench/bare", args.requests, args.concurrency))
        bare_cpu += cpu_seconds(server_pid) - cpu
        cpu, redis_cpu = cpu_seconds(server_pid), cpu_seconds(redis_pid)
        jobs.append(await throughput(port, job_path, args.requests, args.concurrency))
        jobs_cpu += cpu_seconds(server_pid) - cpu
        jobs_redis_cpu += cpu_seconds(redis_pid) - redis_cpu
    await submit_latencies(port, image, args.upload_concurrency, 1)  # warm up
    cpu, redis_cpu = cpu_seconds(server_pid), cpu_seconds(redis_pid)
    latencies = await submit_latencies(port, image, args.upload_concurrency, args.uploads_per_client)
    submit_cpu = cpu_seconds(server_pid) - cpu
    submit_redis_cpu = cpu_seconds(redis_pid) - redis_cpu
    n_gets = args.rounds * (args.requests // args.concurrency) * args.concurrency
    return {
        "load_average_1m_before": load_before,
        "load_average_1m_after": os.getloadavg()[0],
        "cpu_count": os.cpu_count() or 0,
        "bare_rps": statistics.median(bare),
        "job_get_rps": statistics.median(jobs),
        "ratio": statistics.median(jobs) / statistics.median(bare),
        "bare_server_cpu_us": bare_cpu / n_gets * 1e6,
        "job_get_server_cpu_us": jobs_cpu / n_gets * 1e6,
        "job_get_redis_cpu_us": jobs_redis_cpu / n_gets * 1e6,
        "submit_server_cpu_ms": submit_cpu / len(latencies) * 1e3,
        "submit_redis_cpu_ms": submit_redis_cpu / len(latencies) * 1e3,
        "upload_bytes": len(image),
        "submits": len(latencies),
        "submit_p50_ms": percentile(latencies, 50) * 1000,
        "submit_p99_ms": percentile(latencies, 99) * 1000,
        "submit_max_ms": max(latencies) * 1000,
    }


def bench_with_workers(workers: int, redis_url: str, redis_pid: int, args: argparse.Namespace) -> dict:
    api_port = free_port()
    api_proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--port", str(api_port), "--api-workers", str(workers)],
        env={**os.environ, "PYTHONPATH": str(ROOT), "API_BENCH_REDIS_URL": redis_url},
    )
    try:
        wait_port(api_port)
        time.sleep(0.5 if workers > 1 else 0.0)  # let every worker process finish its startup
        return asyncio.run(run_benchmarks(api_port, api_proc.pid, redis_pid, args))
    finally:
        api_proc.terminate()
        api_proc.wait(timeout=20)


ROWS = [  # (label, key, format, target)
    ("load average 1 min, before/after", None, "", ""),
    ("bare endpoint (req/s)", "bare_rps", ".0f", ""),
    ("GET /v1/jobs/{id} (req/s)", "job_get_rps", ".0f", ""),
    ("ratio jobs/bare", "ratio", ".0%", ">= 50%"),
    ("server CPU per bare GET (us)", "bare_server_cpu_us", ".0f", ""),
    ("server CPU per job GET (us)", "job_get_server_cpu_us", ".0f", ""),
    ("redis CPU per job GET (us)", "job_get_redis_cpu_us", ".0f", ""),
    ("server CPU per submit (ms)", "submit_server_cpu_ms", ".2f", ""),
    ("redis CPU per submit (ms)", "submit_redis_cpu_ms", ".2f", ""),
    ("upload size (bytes)", "upload_bytes", "d", ""),
    ("submits measured", "submits", "d", ""),
    ("submit p50 (ms)", "submit_p50_ms", ".1f", ""),
    ("submit p99 (ms)", "submit_p99_ms", ".1f", "<= 50 ms"),
    ("submit max (ms)", "submit_max_ms", ".1f", ""),
]


def print_table(results: dict[str, dict]) -> None:
    names = list(results)
    print(f"{'metric':<36}" + "".join(f"{name:>16}" for name in names) + "  target")
    runs = list(results.values())
    for label, key, fmt, target in ROWS:
        if key is None:
            cells = [f"{r['load_average_1m_before']:.1f}/{r['load_average_1m_after']:.1f}" for r in runs]
        else:
            cells = [format(r[key], fmt) for r in runs]
        print(f"{label:<36}" + "".join(f"{c:>16}" for c in cells) + (f"  {target}" if target else ""))
    print(f"({os.cpu_count()} CPUs; the machine may be shared: compare server CPU per request across runs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="GETs per endpoint per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16, help="keep-alive connections for the GETs")
    parser.add_argument("--upload-concurrency", type=int, default=32)
    parser.add_argument("--uploads-per-client", type=int, default=4)
    parser.add_argument("--upload-kb", type=int, default=256)
    parser.add_argument(
        "--api-workers", type=int, nargs="+", default=[1, 2], help="uvicorn worker processes; one run each"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.port, args.api_workers[0])
        return

    redis_exe = shutil.which("redis-server")
    if redis_exe is None:
        sys.exit("redis-server not found")
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        redis_port = free_port()
        redis_proc = subprocess.Popen(
            [
                redis_exe,
                "--port",
                str(redis_port),
                "--bind",
                HOST,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                tmp,
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            wait_port(redis_port)
            redis_url = f"redis://{HOST}:{redis_port}/0"
            for workers in args.api_workers:
                results[f"{workers} worker" + ("s" if workers > 1 else "")] = bench_with_workers(
                    workers, redis_url, redis_proc.pid, args
                )
        finally:
            redis_proc.terminate()
            redis_proc.wait(timeout=10)
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
