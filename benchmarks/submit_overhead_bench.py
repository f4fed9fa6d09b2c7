"""What the list index and the per-key quota add to a submission, in API-process CPU per submit.

Measured in one run against a throwaway redis-server on loopback, as CPU time of this process (which varies
much less than wall time on a shared machine):

- ``record``: the submission's MULTI as before (the job record, ``SET NX EX``, ~1.5 KB);
- ``record + index``: the same MULTI with the owner's list entry (``common.job_index.JobIndex.queue_add``);
- ``quota admit``: the per-key quota check (``common.quotas.QuotaGate.admit``, one Lua call).

    .venv/bin/python benchmarks/submit_overhead_bench.py [--calls 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis.asyncio as aioredis  # noqa: E402

from common.job_index import JobIndex  # noqa: E402
from common.jobs import InputInfo, Job, new_job_id, utcnow  # noqa: E402
from common.keys import job_key  # noqa: E402
from common.params import RestoreParams  # noqa: E402
from common.quotas import QuotaGate  # noqa: E402
from common.settings import Settings  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def cpu_per_call(calls: int, fn: Callable[[int], Awaitable[object]]) -> float:
    """Microseconds of this process's CPU per call (after a short warm-up)."""
    for i in range(50):
        await fn(-1 - i)
    start = time.process_time()
    for i in range(calls):
        await fn(i)
    return (time.process_time() - start) / calls * 1e6


async def run(port: int, calls: int) -> dict[str, float]:
    client = aioredis.Redis(port=port)
    settings = Settings(
        redis_url=f"redis://127.0.0.1:{port}/0", max_active_jobs_per_key=10**9, submit_rate_per_key=10**9
    )
    index, gate = JobIndex(client, settings.job_ttl_seconds), QuotaGate(client, settings)
    job = Job(
        id=new_job_id(), params=RestoreParams(), input=InputInfo(width=64, height=64, format="png"),
        created_at=utcnow(),
    )  # fmt: skip
    record = job.to_redis()

    def submission(with_index: bool) -> Callable[[int], Awaitable[object]]:
        async def once(i: int) -> object:
            async with client.pipeline(transaction=True) as tx:
                if with_index:
                    index.queue_add(tx, job)
                tx.set(job_key(f"{job.id}{i}"), record, ex=600, nx=True)
                return await tx.execute()

        return once

    try:
        results = {}
        for _ in range(2):  # interleaved twice, so drift in machine load hits each alike
            for name, fn in (
                ("record", submission(False)),
                ("record + index", submission(True)),
                ("quota admit", lambda i: gate.admit("k_bench", f"j_{i}")),
            ):
                results.setdefault(name, []).append(await cpu_per_call(calls, fn))
        return {name: min(values) for name, values in results.items()}
    finally:
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    exe = shutil.which("redis-server")
    if exe is None:
        sys.exit("redis-server is required")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        results = asyncio.run(run(port, args.calls))
    finally:
        proc.terminate()
        proc.wait()
    base = results["record"]
    print(f"{'API CPU per call (us)':<28}{'us':>8}{'vs record':>12}")
    for name, value in results.items():
        print(f"{name:<28}{value:>8.0f}{value / base:>11.2f}x")


if __name__ == "__main__":
    main()
