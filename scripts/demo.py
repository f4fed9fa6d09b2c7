"""The end-to-end demo behind ``bash scripts/demo.sh``: the real API, a real worker and the real client.

Steps: find or start Redis -> pick weights (official if present, else download if the network allows, else the
tiny preset with random weights, said plainly) -> start ``python -m service`` and ``python -m worker`` on free
ports -> make a deterministic degraded sample image -> run ``restore-client`` with its progress bar ->
write ``out/restored.png`` -> stop everything this script started (also on Ctrl-C, SIGTERM or failure).
With ``--serve`` the stack stays up after that, for the page at ``/``, until Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse

import httpx
from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "out"
TINY_NOTICE = (
    "no weights and no network: running the whole path with the tiny preset "
    "(random weights — NOT a restoration model)"
)


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


# ------------------------------------------------------------------------------------------------ processes


class Children:
    """Processes this demo started, stopped in reverse order however the demo ends.

    Children get their own session so the terminal's Ctrl-C reaches only this script, which then shuts
    them down in order (API, worker, Redis) instead of all dying at once mid-write.
    """

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self.procs.append((name, proc))
        return proc

    def check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with code {proc.returncode}:\n{self.tail(name)}")

    def tail(self, name: str, lines: int = 25) -> str:
        path = self.log_dir / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop_all(self) -> None:
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                say(f"stopping {name} (pid {proc.pid})")
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs.clear()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(what: str, ready: Callable[[], bool], timeout_s: float, children: Children) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        children.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.25)


# ---------------------------------------------------------------------------------------------------- Redis


def redis_answers(host: str, port: int) -> bool:
    """A raw RESP PING: no client library needed, and nothing else on the port is mistaken for Redis."""
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def ensure_redis_server() -> str:
    exe = shutil.which("redis-server")
    if exe:
        return exe
    say("redis-server not found: installing it with apt-get")
    sudo: list[str] = []
    if os.geteuid() != 0:
        if not shutil.which("sudo"):
            raise RuntimeError("redis-server is missing and this user cannot apt-get install it")
        sudo = ["sudo", "-n"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "redis-server"], check=True, env=env)
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(exe).exists():
        raise RuntimeError("apt-get installed redis-server but it is not on PATH")
    return exe


def redis_url(children: Children, workdir: Path) -> tuple[str, bool]:
    """The Redis URL to use, and whether that Redis was already running (not ours to own)."""
    configured = os.environ.get("DIFFBIR_REDIS_URL", "redis://127.0.0.1:6379/0")
    parsed = urlparse(configured)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 6379
    if redis_answers(host, port):
        say(f"reusing the Redis already listening on {host}:{port}")
        return configured, True
    exe = ensure_redis_server()
    port = free_port()
    # In-memory only (no RDB/AOF): the demo's jobs are throwaway, and nothing is left on disk.
    argv = [
        exe,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(workdir),
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    children.start("redis", argv)
    wait_for("redis-server", lambda: redis_answers("127.0.0.1", port), 20, children)
    say(f"started redis-server on 127.0.0.1:{port}")
    return f"redis://127.0.0.1:{port}/0", False


# -------------------------------------------------------------------------------------------------- weights


def network_reaches_weights() -> bool:
    try:
        httpx.head("https://huggingface.co", timeout=5, follow_redirects=True)
        return True
    except httpx.HTTPError:
        return False


def choose_preset(requested: str | None, weights_dir: Path, version: str, task: str, download: bool) -> str:
    from model.weights import missing_files  # light: no torch

    if requested == "tiny":
        say("preset forced to tiny (random weights — NOT a restoration model)")
        return "tiny"
    missing = missing_files(version, weights_dir, tasks=[task])
    if not missing:
        say(f"official {version} weights found in {weights_dir}")
        return "full"
    names = ", ".join(w.filename for w in missing)
    if download and network_reaches_weights():
        say(f"downloading the official {version} weights into {weights_dir} ({names}; several GB)")
        cmd = [
            sys.executable,
            "-m",
            "model",
            "download",
            "--version",
            version,
            "--weights-dir",
            str(weights_dir),
        ]
        subprocess.run(cmd, cwd=ROOT, check=True)
        return "full"
    if requested == "full":
        raise RuntimeError(f"--preset full needs {names} in {weights_dir} (python -m model download)")
    say(TINY_NOTICE if download else f"no weights ({names} missing) and --no-download: using the tiny preset")
    return "tiny"


# ------------------------------------------------------------------------------------------------- the image


def sample_image(path: Path, size: tuple[int, int] = (96, 64), seed: int = 7) -> Path:
    """A deterministic, photo-like degraded picture: a landscape, then blur, downscale, noise and JPEG."""
    w, h = size[0] * 4, size[1] * 4
    img = Image.new("RGB", (w, h))
    draw = ImageDraw.Draw(img)
    for y in range(h):  # sky gradient
        t = y / h
        draw.line([(0, y), (w, y)], fill=(int(90 + 120 * t), int(150 + 70 * t), int(235 - 40 * t)))
    draw.ellipse([w * 0.68, h * 0.1, w * 0.85, h * 0.1 + w * 0.17], fill=(255, 214, 90))  # sun
    draw.polygon([(0, h * 0.75), (w * 0.3, h * 0.42), (w * 0.62, h * 0.78)], fill=(70, 110, 80))  # hills
    draw.polygon([(w * 0.35, h * 0.8), (w * 0.7, h * 0.5), (w, h * 0.82)], fill=(50, 90, 70))
    draw.rectangle([0, h * 0.78, w, h], fill=(95, 140, 60))  # meadow
    draw.rectangle([w * 0.16, h * 0.6, w * 0.3, h * 0.8], fill=(180, 60, 50))  # house
    draw.polygon([(w * 0.14, h * 0.6), (w * 0.23, h * 0.5), (w * 0.32, h * 0.6)], fill=(110, 50, 40))
    img = img.filter(ImageFilter.GaussianBlur(3)).resize(size, Image.Resampling.BICUBIC)
    rng = random.Random(seed)
    noisy = bytes(max(0, min(255, c + round(rng.gauss(0, 12)))) for c in img.tobytes())
    img = Image.frombytes("RGB", img.size, noisy)
    path.parent.mkdir(parents=True, exist_ok=True)
    jpeg = path.with_suffix(".jpg")
    img.save(jpeg, quality=35)  # JPEG blocking is part of the degradation
    Image.open(jpeg).convert("RGB").save(path)
    jpeg.unlink()
    return path


# ---------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run the DiffBIR service end to end on this machine.")
    parser.add_argument("--preset", choices=["full", "tiny"], help="default: full if weights are available")
    parser.add_argument("--no-download", action="store_true", help="never download weights")
    parser.add_argument("--version", default=os.environ.get("DIFFBIR_WORKER_VERSION", "v2"))
    parser.add_argument("--steps", type=int, help="sampler steps (50 on GPU, 10 on CPU, 40 tiny)")
    parser.add_argument("--upscale", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the restoration")
    parser.add_argument(
        "--serve", action="store_true", help="keep the stack up afterwards (use the page) until Ctrl-C"
    )
    return parser.parse_args(argv)


def device() -> tuple[str, str]:
    import torch  # the worker needs it anyway; only asked here to choose device and precision

    return ("cuda", "fp16") if torch.cuda.is_available() else ("cpu", "fp32")


def run(args: argparse.Namespace, children: Children, workdir: Path) -> int:
    weights_dir = Path(os.environ.get("DIFFBIR_WEIGHTS_DIR", ROOT / "weights")).resolve()
    preset = choose_preset(args.preset, weights_dir, args.version, "sr", download=not args.no_download)
    dev, precision = device()
    steps = args.steps or (40 if preset == "tiny" else 50 if dev == "cuda" else 10)
    say(f"worker: preset={preset} device={dev} precision={precision} steps={steps}")

    url, shared = redis_url(children, workdir)
    api_port, metrics_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFBIR_")}
    env.update(
        PYTHONUNBUFFERED="1",
        DIFFBIR_REDIS_URL=url,
        DIFFBIR_STORAGE_BACKEND="redis",
        DIFFBIR_WORKER_PRESET=preset,
        DIFFBIR_WORKER_VERSION=args.version,
        DIFFBIR_WEIGHTS_DIR=str(weights_dir),
        DIFFBIR_WORKER_DEVICE=dev,
        DIFFBIR_WORKER_PRECISION=precision,
        DIFFBIR_WORKER_METRICS_PORT=str(metrics_port),
        DIFFBIR_WORKER_HEARTBEAT_INTERVAL_S="2",
        DIFFBIR_HOST="127.0.0.1",
        DIFFBIR_PORT=str(api_port),
    )
    if shared:
        # A queue of our own on someone else's Redis: the demo worker never takes their jobs, and theirs
        # never take ours.
        env["DIFFBIR_QUEUE_NAME"] = f"diffbir-demo-{os.getpid()}"
    children.start("worker", [sys.executable, "-m", "worker"], env)
    children.start("api", [sys.executable, "-m", "service"], env)
    base = f"http://127.0.0.1:{api_port}"

    def status_ok(path: str) -> bool:
        try:
            return httpx.get(base + path, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for("the API (/healthz)", lambda: status_ok("/healthz"), 60, children)
    say(f"API up on {base}: the page is at {base}/ (docs at {base}/docs); waiting for the worker...")
    wait_for("a worker heartbeat (/readyz)", lambda: status_ok("/readyz"), 900, children)
    say(f"worker ready (metrics on http://127.0.0.1:{metrics_port}/metrics)")

    image = sample_image(OUT / "input.png")
    name = "restored.png" if preset == "full" else "restored-TINY-RANDOM-WEIGHTS.png"
    output = OUT / name
    say(f"restoring {image.relative_to(ROOT)} ({Image.open(image).size[0]}x{Image.open(image).size[1]}) ...")
    cmd = [
        sys.executable, "-m", "client.cli", str(image), "-o", str(output), "--url", base,
        "--task", "sr", "--upscale", f"{args.upscale:g}", "--steps", str(steps), "--seed", "1234",
        "--fidelity", "0.5", "--timeout", f"{args.timeout:g}",
    ]  # fmt: skip
    code = subprocess.run(cmd, cwd=ROOT, env=env).returncode
    if code != 0:
        say(f"restore-client failed with exit code {code}; worker log tail:\n{children.tail('worker')}")
        return code
    say(f"done: {output.relative_to(ROOT)}")
    if preset == "tiny":
        say("that image comes from RANDOM weights: it shows the service path works, not what DiffBIR does.")
    if args.serve:
        return serve(base, children)
    say(f"(run with --serve to keep the stack up and use the page at {base}/)")
    return 0


def serve(base: str, children: Children) -> int:
    """Keep the stack up for a person using the page, until Ctrl-C (or SIGTERM) or a child dies."""
    say(f"serving: open {base}/ in a browser (API docs: {base}/docs). Ctrl-C stops everything.")
    try:
        while True:
            children.check_alive()
            time.sleep(1)
    except KeyboardInterrupt:
        say("stopping on request")
        return 0


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """SIGTERM/SIGHUP unwind like Ctrl-C, so the ``finally`` that stops the children always runs."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    OUT.mkdir(exist_ok=True)
    log_dir = OUT / "demo-logs"
    log_dir.mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="diffbir-demo-"))
    children = Children(log_dir)
    started = time.monotonic()
    try:
        with sigterm_as_exit():
            code = run(args, children, workdir)
    except KeyboardInterrupt:
        say("interrupted")
        code = 130
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        say(f"FAILED: {exc}")
        code = 1
    finally:
        children.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    say(f"finished in {time.monotonic() - started:.0f} s (logs in {log_dir.relative_to(ROOT)}/)")
    return code


if __name__ == "__main__":
    sys.exit(main())
