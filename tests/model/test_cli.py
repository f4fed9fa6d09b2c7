"""`python -m model restore` on a small PNG with the tiny preset; the one-line error for missing weights."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "model", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_restore_tiny_writes_the_upscaled_image(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.png", tmp_path / "out" / "restored.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8)).save(src)
    proc = _run(
        "restore",
        str(src),
        "-o",
        str(dst),
        "--preset",
        "tiny",
        "--device",
        "cpu",
        "--task",
        "sr",
        "--upscale",
        "2",
        "--steps",
        "2",
        "--seed",
        "7",
        "--sampler",
        "dpmpp",
        "--fidelity",
        "0.3",
    )
    assert proc.returncode == 0, proc.stderr
    with Image.open(dst) as out:
        assert out.size == (40, 24) and out.mode == "RGB"
    assert "seed 7" in proc.stdout
    assert "NOT a restoration model" in proc.stderr


def test_missing_weights_is_one_clear_line_and_exit_2(tmp_path: Path) -> None:
    src = tmp_path / "in.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src)
    proc = _run(
        "restore",
        str(src),
        "-o",
        str(tmp_path / "o.png"),
        "--device",
        "cpu",
        "--version",
        "v2",
        "--weights-dir",
        str(tmp_path / "empty"),
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "v2-1_512-ema-pruned.ckpt" in lines[0] and "BSRNet.pth" in lines[0] and "v2.pth" in lines[0]
    assert "python -m model download --version v2" in lines[0]


def test_unreadable_input_is_a_user_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    proc = _run("restore", str(bad), "-o", str(tmp_path / "o.png"), "--preset", "tiny", "--device", "cpu")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: cannot read")


def test_convert_without_weights_names_the_missing_files(tmp_path: Path) -> None:
    proc = _run("convert", "--version", "v2", "--weights-dir", str(tmp_path))
    assert proc.returncode == 2
    assert "v2-1_512-ema-pruned.ckpt" in proc.stderr and "v2.pth" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
