"""The demo's own decisions; the full run is `bash scripts/demo.sh`, its service path is tests/e2e's."""

from __future__ import annotations

import importlib.util
import socket
import threading
from pathlib import Path
from types import ModuleType

import pytest
from PIL import Image

from model.weights import version_files

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("demo", ROOT / "scripts" / "demo.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sample_image_is_deterministic_and_small(demo, tmp_path):
    a = demo.sample_image(tmp_path / "a.png")
    b = demo.sample_image(tmp_path / "b.png")
    assert a.read_bytes() == b.read_bytes()
    with Image.open(a) as img:
        assert img.size == (96, 64) and img.mode == "RGB"
        assert len(set(img.getchannel("G").tobytes())) > 50  # a picture, not a flat fill
    assert demo.sample_image(tmp_path / "c.png", seed=8).read_bytes() != a.read_bytes()


def test_preset_follows_the_weights_on_disk(demo, tmp_path):
    assert demo.choose_preset(None, tmp_path, "v2", "sr", download=False) == "tiny"
    with pytest.raises(RuntimeError, match="python -m model download"):
        demo.choose_preset("full", tmp_path, "v2", "sr", download=False)
    for weight in version_files("v2", ["sr"]):
        (tmp_path / weight.filename).write_bytes(b"present")
    assert demo.choose_preset(None, tmp_path, "v2", "sr", download=False) == "full"
    assert demo.choose_preset("tiny", tmp_path, "v2", "sr", download=False) == "tiny"


def test_tiny_notice_says_plainly_what_runs(demo):
    assert demo.TINY_NOTICE == (
        "no weights and no network: running the whole path with the tiny preset "
        "(random weights — NOT a restoration model)"
    )


def test_redis_probe_needs_a_real_pong(demo):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]

        def answer_like_http() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(64)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

        thread = threading.Thread(target=answer_like_http)
        thread.start()
        assert not demo.redis_answers("127.0.0.1", port)  # something listens, but it is not Redis
        thread.join()
    assert not demo.redis_answers("127.0.0.1", port)  # nothing listens any more


def test_serve_keeps_the_stack_until_interrupted_or_a_child_dies(demo, tmp_path, monkeypatch):
    assert demo.parse_args(["--serve"]).serve and not demo.parse_args([]).serve
    children = demo.Children(tmp_path)
    children.start("short", ["python3", "-c", "import time; time.sleep(0.3)"])
    try:
        with pytest.raises(RuntimeError, match="short exited"):
            demo.serve("http://127.0.0.1:1", children)  # a dead child ends serving, as a failure
    finally:
        children.stop_all()

    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(demo.time, "sleep", interrupt)
    assert demo.serve("http://127.0.0.1:1", demo.Children(tmp_path)) == 0  # Ctrl-C is the normal way out
