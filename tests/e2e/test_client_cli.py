"""``restore-client`` (the real CLI, as a subprocess) against the real API + worker stack of the e2e fixtures.

The progress bar must show the worker's own step counts (k/N with 0 < k < N seen while sampling), the file
must be the restored image (through a 307 to a presigned URL on the S3 backend), and Ctrl-C must cancel the
job on the server.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

from PIL import Image

from tests.e2e.conftest import API_KEYS, ROOT, Stack, wait_until
from tests.worker.conftest import png_bytes

# Enough steps that the sampler outlives several polls even on an idle machine (8 steps took ~80 ms).
STEPS = 60


def cli(live_stack: Stack, src: Path, out: Path, *extra: str) -> list[str]:
    base = f"http://127.0.0.1:{live_stack.api_port}"
    return [sys.executable, "-m", "client.cli", str(src), "-o", str(out), "--url", base, *extra]


def test_cli_shows_live_worker_steps_and_writes_the_result(live_stack: Stack, tmp_path: Path) -> None:
    src = tmp_path / "in.png"
    src.write_bytes(png_bytes(32, 24, (150, 90, 60)))
    out = tmp_path / "restored.png"
    args = ["--api-key", API_KEYS[0], "--steps", str(STEPS), "--upscale", "2", "--seed", "11"]
    proc = subprocess.run(
        cli(live_stack, src, out, *args), capture_output=True, text=True, timeout=240, cwd=ROOT
    )
    assert proc.returncode == 0, f"{proc.stderr}\n--- worker ---\n{live_stack.worker.tail(30)}"

    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == (64, 48)
    renders = [
        (int(k), int(n)) for k, n in re.findall(r"sampler:\s+\d+%\|[^|\r\n]*\|\s*(\d+)/(\d+)", proc.stderr)
    ]
    assert renders, proc.stderr
    assert {n for _, n in renders} == {STEPS}
    seen = {k for k, _ in renders}
    assert STEPS in seen
    assert seen & set(range(1, STEPS)), f"no intermediate step reached the bar: {sorted(seen)}"
    job_id = re.search(r"job (j_[A-Za-z0-9_-]+) queued", proc.stderr).group(1)  # type: ignore[union-attr]
    doc = live_stack.job(job_id)
    assert doc["status"] == "succeeded" and doc["params"]["steps"] == STEPS and doc["params"]["seed"] == 11


def test_cli_reports_the_problem_detail_of_a_refused_request(live_stack: Stack, tmp_path: Path) -> None:
    src = tmp_path / "in.png"
    src.write_bytes(png_bytes(16, 16))
    out = tmp_path / "o.png"
    proc = subprocess.run(
        cli(live_stack, src, out, "--api-key", "not-a-key"),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 3, proc.stderr
    assert "HTTP 401" in proc.stderr and not out.exists()


def test_ctrl_c_cancels_the_running_job(live_stack: Stack, tmp_path: Path) -> None:
    src = tmp_path / "in.png"
    src.write_bytes(png_bytes(32, 32, (30, 60, 90)))
    argv = cli(
        live_stack, src, tmp_path / "o.png", "--api-key", API_KEYS[0], "--steps", "100", "--upscale", "2"
    )
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, cwd=ROOT)
    assert proc.stderr is not None
    captured = bytearray()

    def pump() -> None:  # tqdm redraws with \r, so read raw chunks rather than lines
        while chunk := os.read(proc.stderr.fileno(), 4096):  # type: ignore[union-attr]
            captured.extend(chunk)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        wait_until(lambda: re.search(rb"sampler:\s+\d+%", captured), 120, 0.05, what="the sampler bar")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=5)
    text = captured.decode(errors="replace")
    job_id = re.search(r"job (j_[A-Za-z0-9_-]+) queued", text).group(1)  # type: ignore[union-attr]
    assert f"canceled job {job_id}" in text
    assert live_stack.wait_status(job_id)["status"] == "canceled"
