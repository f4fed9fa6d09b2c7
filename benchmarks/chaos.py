"""Chaos run: N jobs through a real stack (Redis with AOF, API, workers) under random kill -9 of workers, a
kill -9 of the API and kill -9 + restart of Redis; prints ``N passed, M failed`` and recovery timings.

Everything runs as real processes (tiny preset on CPU, production recovery settings unless overridden):

- ``kill_to_reclaim_s``: for each worker killed while holding a running job, seconds from the kill until a
  new attempt of that job was running (``attempts`` went up): what a lost job waits before anyone notices;
- ``drain_after_last_fault_s``: seconds from the last fault until every job had ended.

A job passes when it ended ``succeeded`` with a result of the expected size. Submissions use an
Idempotency-Key and retry through API/Redis outages like a well-behaved client.

    .venv/bin/python benchmarks/chaos.py --jobs 40 --workers 2 --json benchmarks/results/chaos.json
    make chaos
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "chaos-key"
TERMINAL = ("succeeded", "failed", "canceled")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def png(width: int, height: int, seed: int) -> bytes:
    rng = random.Random(seed)
    img = Image.new("RGB", (width, height), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


class Proc:
    """A child process with its output appended to a log file; restartable."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name, self.argv, self.env, self.log_path = name, argv, env, log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, **env: str) -> None:
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start #{self.starts} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.argv, cwd=ROOT, env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT
            )

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill9()


@dataclass
class Config:
    jobs: int = 40
    workers: int = 2
    steps: int = 6
    size: int = 32
    seed: int = 1
    worker_kills: int = 4
    api_kills: int = 1
    redis_restarts: int = 1
    fault_gap_s: tuple[float, float] = (4.0, 9.0)
    timeout_s: float = 900.0
    env: dict[str, str] = field(default_factory=dict)  # extra DIFFBIR_* settings for every process
    log_dir: Path | None = None


class Chaos:
    def __init__(self, cfg: Config, workdir: Path) -> None:
        self.cfg, self.workdir = cfg, workdir
        self.rng = random.Random(cfg.seed)
        self.redis_port, self.api_port = free_port(), free_port()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        exe = shutil.which("redis-server")
        if exe is None:
            raise SystemExit("redis-server not found on PATH")
        log_dir = cfg.log_dir or workdir
        # AOF with fsync on every write: a kill -9 of Redis loses nothing acknowledged (docs/worker.md).
        redis_argv = [exe, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", ""]
        redis_argv += ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(workdir)]
        self.redis_proc = Proc("redis", redis_argv, dict(os.environ), log_dir)
        env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFBIR_")}
        env.update(
            PYTHONUNBUFFERED="1",
            OMP_NUM_THREADS="1",
            DIFFBIR_REDIS_URL=self.redis_url,
            DIFFBIR_API_KEYS=json.dumps([API_KEY]),
            DIFFBIR_WORKER_PRESET="tiny",
            DIFFBIR_WORKER_DEVICE="cpu",
            DIFFBIR_WORKER_PRECISION="fp32",
            DIFFBIR_WORKER_METRICS_PORT="0",
            DIFFBIR_LOG_LEVEL="INFO",
            **cfg.env,
        )
        api_env = dict(env, DIFFBIR_PORT=str(self.api_port), DIFFBIR_HOST="127.0.0.1")
        self.api = Proc("api", [sys.executable, "-m", "service"], api_env, log_dir)
        self.workers = [
            Proc(f"worker{i}", [sys.executable, "-m", "worker"], env, log_dir) for i in range(cfg.workers)
        ]
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.api_port}", timeout=10)
        self.db = redis.Redis(port=self.redis_port, socket_timeout=2, socket_connect_timeout=2)
        self.jobs: dict[int, str] = {}  # submission index -> job id
        self.seen: dict[str, dict[str, Any]] = {}  # job id -> last document read
        self.attempts_at: dict[str, list[tuple[float, int]]] = {}  # job id -> (time, attempts) changes
        self.finished_at: dict[str, float] = {}
        self.faults: list[dict[str, Any]] = []
        self.stop = threading.Event()

    # --- processes ---

    def start_worker(self, i: int) -> None:
        worker = self.workers[i]
        worker.start(DIFFBIR_WORKER_ID=f"chaos-w{i}-{worker.starts + 1}")

    def worker_id(self, i: int) -> str:
        return f"chaos-w{i}-{self.workers[i].starts}"

    def start_redis(self) -> None:
        self.redis_proc.start()
        self._wait(lambda: self._ping(), 20, "redis up")

    def _ping(self) -> bool:
        try:
            return bool(self.db.ping())
        except redis.RedisError:
            return False

    def start_api(self) -> None:
        self.api.start()

        def up() -> bool:
            try:
                return self.http.get("/healthz").status_code == 200
            except httpx.HTTPError:
                return False

        self._wait(up, 60, "API up")

    def _wait(self, predicate: Any, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
            time.sleep(0.1)

    def wait_workers_ready(self, timeout_s: float = 300) -> None:
        def ready() -> bool:
            try:
                return all(
                    self.db.zscore("diffbir:workers", self.worker_id(i)) is not None
                    for i in range(len(self.workers))
                )
            except redis.RedisError:
                return False

        self._wait(ready, timeout_s, "workers ready")

    # --- client ---

    def submit_all(self) -> None:
        for index in range(self.cfg.jobs):
            key = f"chaos-{uuid.uuid4()}"
            data = png(self.cfg.size, self.cfg.size, self.cfg.seed * 100_000 + index)
            fields = {"steps": str(self.cfg.steps), "upscale": "2", "seed": str(index)}
            while not self.stop.is_set():
                try:
                    resp = self.http.post(
                        "/v1/restore",
                        files={"image": ("in.png", data, "image/png")},
                        data=fields,
                        headers={"Authorization": f"Bearer {API_KEY}", "Idempotency-Key": key},
                    )
                except httpx.HTTPError:
                    time.sleep(0.3)
                    continue
                if resp.status_code in (200, 202):
                    self.jobs[index] = resp.json()["id"]
                    break
                if resp.status_code in (409, 429, 503):  # in progress / busy / Redis away: retry
                    time.sleep(0.3)
                    continue
                raise RuntimeError(f"submission {index}: {resp.status_code} {resp.text}")
            time.sleep(self.rng.uniform(0.05, 0.4))

    def watch(self) -> None:
        """Poll every job record (one MGET) and note when attempts change and when each job ends."""
        while not self.stop.is_set():
            ids = list(self.jobs.values())
            try:
                raws = self.db.mget([f"diffbir:job:{j}" for j in ids]) if ids else []
            except redis.RedisError:
                time.sleep(0.2)
                continue
            now = time.monotonic()
            for job_id, raw in zip(ids, raws, strict=True):
                if raw is None:
                    continue
                doc = json.loads(raw)
                self.seen[job_id] = doc
                history = self.attempts_at.setdefault(job_id, [])
                if not history or history[-1][1] != doc["attempts"]:
                    history.append((now, doc["attempts"]))
                if doc["status"] in TERMINAL and job_id not in self.finished_at:
                    self.finished_at[job_id] = now
            time.sleep(0.1)

    # --- faults ---

    def running_on(self, worker_id: str) -> list[str]:
        try:
            return [j.decode() for j in self.db.smembers(f"diffbir:held:{worker_id}")]
        except redis.RedisError:
            return []

    def kill_worker(self) -> None:
        # Prefer a worker that holds a running job: that is the case recovery is for.
        order = list(range(len(self.workers)))
        self.rng.shuffle(order)
        busy = [i for i in order if self.workers[i].alive and self.running_on(self.worker_id(i))]
        i = busy[0] if busy else order[0]
        held = self.running_on(self.worker_id(i))
        attempts = {j: (self.seen.get(j) or {}).get("attempts", 0) for j in held}
        killed_at = time.monotonic()
        self.workers[i].kill9()
        self.faults.append({"kind": "worker", "at": killed_at, "worker": self.worker_id(i), "held": attempts})
        time.sleep(self.rng.uniform(1.0, 3.0))  # the orchestrator restarts it
        self.start_worker(i)

    def kill_api(self) -> None:
        self.api.kill9()
        self.faults.append({"kind": "api", "at": time.monotonic()})
        time.sleep(self.rng.uniform(0.5, 2.0))
        self.start_api()

    def restart_redis(self) -> None:
        self.redis_proc.kill9()
        self.faults.append({"kind": "redis", "at": time.monotonic()})
        time.sleep(self.rng.uniform(1.0, 3.0))
        self.start_redis()

    def inject(self) -> None:
        plan = ["worker"] * self.cfg.worker_kills + ["api"] * self.cfg.api_kills
        plan += ["redis"] * self.cfg.redis_restarts
        self.rng.shuffle(plan)
        actions = {"worker": self.kill_worker, "api": self.kill_api, "redis": self.restart_redis}
        for kind in plan:
            if self.stop.wait(self.rng.uniform(*self.cfg.fault_gap_s)):
                return
            actions[kind]()

    # --- run ---

    def run(self) -> dict[str, Any]:
        self.start_redis()
        for i in range(len(self.workers)):
            self.start_worker(i)
        self.start_api()
        self.wait_workers_ready()
        started = time.monotonic()
        threads = [threading.Thread(target=t, daemon=True) for t in (self.submit_all, self.watch)]
        for t in threads:
            t.start()
        injector = threading.Thread(target=self.inject, daemon=True)
        injector.start()
        deadline = started + self.cfg.timeout_s
        while time.monotonic() < deadline:
            done = len(self.jobs) == self.cfg.jobs and len(self.finished_at) == self.cfg.jobs
            if done and not injector.is_alive():
                break
            time.sleep(0.2)
        self.stop.set()
        for t in (*threads, injector):
            t.join(timeout=30)
        return self.report(started)

    def report(self, started: float) -> dict[str, Any]:
        passed, failures = 0, []
        expected = self.cfg.size * 2
        for index in range(self.cfg.jobs):
            job_id = self.jobs.get(index)
            doc = self.seen.get(job_id or "") or {}
            result = doc.get("result") or {}
            ok = doc.get("status") == "succeeded" and result.get("width") == expected
            if ok and job_id is not None:
                ok = self._result_ok(job_id, expected)
            if ok:
                passed += 1
            else:
                failures.append({"index": index, "job": job_id, "status": doc.get("status"), "doc": doc})
        reclaim = []
        for fault in self.faults:
            for job_id, attempts in fault.get("held", {}).items():
                later = [t for t, a in self.attempts_at.get(job_id, []) if t > fault["at"] and a > attempts]
                if later:
                    reclaim.append(later[0] - fault["at"])
        last_fault = max((f["at"] for f in self.faults), default=started)
        last_end = max(self.finished_at.values(), default=time.monotonic())
        return {
            "jobs": self.cfg.jobs,
            "passed": passed,
            "failed": len(failures),
            "workers": self.cfg.workers,
            "faults": {k: sum(f["kind"] == k for f in self.faults) for k in ("worker", "api", "redis")},
            "kill_to_reclaim_s": _stats(reclaim),
            "drain_after_last_fault_s": round(max(0.0, last_end - last_fault), 2),
            "total_s": round(last_end - started, 2),
            "failures": failures[:10],
            "config": {k: v for k, v in vars(self.cfg).items() if k not in ("log_dir",)},
        }

    def _result_ok(self, job_id: str, expected: int) -> bool:
        try:
            resp = self.http.get(f"/v1/jobs/{job_id}/result", headers={"Authorization": f"Bearer {API_KEY}"})
            if resp.status_code != 200:
                return False
            with Image.open(io.BytesIO(resp.content)) as img:
                return img.size == (expected, expected)
        except (httpx.HTTPError, OSError):
            return False

    def close(self) -> None:
        self.stop.set()
        self.api.stop()
        for worker in self.workers:
            worker.stop()
        self.http.close()
        with contextlib.suppress(redis.RedisError):
            self.db.close()
        self.redis_proc.kill9()


def _stats(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "median": round(statistics.median(values), 2),
        "max": round(max(values), 2),
        "values": [round(v, 2) for v in sorted(values)],
    }


def run_chaos(cfg: Config) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="diffbir-chaos-") as tmp:
        chaos = Chaos(cfg, Path(tmp))
        try:
            return chaos.run()
        finally:
            chaos.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--worker-kills", type=int, default=4)
    parser.add_argument("--api-kills", type=int, default=1)
    parser.add_argument("--redis-restarts", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--set", action="append", default=[], help="extra DIFFBIR_X=value for every process")
    parser.add_argument("--log-dir", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.set)
    if args.log_dir:
        args.log_dir.mkdir(parents=True, exist_ok=True)
    cfg = Config(
        jobs=args.jobs,
        workers=args.workers,
        steps=args.steps,
        seed=args.seed,
        worker_kills=args.worker_kills,
        api_kills=args.api_kills,
        redis_restarts=args.redis_restarts,
        timeout_s=args.timeout,
        env=env,
        log_dir=args.log_dir,
    )
    result = run_chaos(cfg)
    print(json.dumps({k: v for k, v in result.items() if k != "failures"}, indent=2))
    for failure in result["failures"]:
        print("FAILED:", json.dumps(failure)[:400])
    print(f"{result['passed']} passed, {result['failed']} failed")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    sys.exit(0 if result["failed"] == 0 else 1)


if __name__ == "__main__":
    main()
