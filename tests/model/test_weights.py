"""Weights registry, resolution of what a version/task needs, and resumable downloads (local server only)."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from model import weights
from model.errors import InvalidInputError, ModelError, WeightsMissingError

EXPECTED = {  # version -> task -> (sd, controlnet, stage1) filenames, from the reference repository
    "v1": {
        "sr": ("v2-1_512-ema-pruned.ckpt", "v1_general.pth", "general_swinir_v1.ckpt"),
        "denoise": ("v2-1_512-ema-pruned.ckpt", "v1_general.pth", "general_swinir_v1.ckpt"),
        "face": ("v2-1_512-ema-pruned.ckpt", "v1_face.pth", "face_swinir_v1.ckpt"),
    },
    "v2": {
        "sr": ("v2-1_512-ema-pruned.ckpt", "v2.pth", "BSRNet.pth"),
        "denoise": ("v2-1_512-ema-pruned.ckpt", "v2.pth", "scunet_color_real_psnr.pth"),
        "face": ("v2-1_512-ema-pruned.ckpt", "v2.pth", "face_swinir_v1.ckpt"),
    },
    "v2.1": {
        "sr": ("sd2.1-base-zsnr-laionaes5.ckpt", "DiffBIR_v2.1.pt", "realesrgan_s4_swinir_100k.pth"),
        "denoise": ("sd2.1-base-zsnr-laionaes5.ckpt", "DiffBIR_v2.1.pt", "realesrgan_s4_swinir_100k.pth"),
        "face": ("sd2.1-base-zsnr-laionaes5.ckpt", "DiffBIR_v2.1.pt", "face_swinir_v1.ckpt"),
    },
}
OFFICIAL_HOSTS = (
    "https://huggingface.co/lxq007/DiffBIR-v2/resolve/main/",
    "https://huggingface.co/lxq007/DiffBIR/resolve/main/",
    "https://huggingface.co/stabilityai/stable-diffusion-2-1-base/resolve/main/",
    "https://github.com/cszn/KAIR/releases/download/v1.0/",
    "https://github.com/xinntao/facexlib/releases/download/",
)


# --- registry and resolution ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", list(EXPECTED))
@pytest.mark.parametrize("task", ["sr", "denoise", "face"])
def test_requirements(version: str, task: str) -> None:
    files = weights.required(version, task)
    names = (files["sd"].filename, files["controlnet"].filename, files["stage1"].filename)
    assert names == EXPECTED[version][task]
    assert all(w.role == role for role, w in files.items())


def test_registry_is_consistent() -> None:
    for w in weights.REGISTRY.values():
        assert w.url.startswith(OFFICIAL_HOSTS) and w.url.endswith("/" + w.filename), w.name
        users = {
            v
            for v, by_task in weights.REQUIREMENTS.items()
            for need in by_task.values()
            if w.name in need.values()
        }
        assert users == set(w.versions), w.name
        assert (w.stage1_kind is not None) == (w.role == "stage1")
    kinds = {w.stage1_kind for w in weights.REGISTRY.values() if w.role == "stage1"}
    assert kinds == {"swinir", "bsrnet", "scunet"}


def test_unknown_version_task_name() -> None:
    with pytest.raises(InvalidInputError, match="version"):
        weights.required("v3", "sr")
    with pytest.raises(InvalidInputError, match="task"):
        weights.required("v2", "colorize")
    with pytest.raises(InvalidInputError, match="unknown weight file"):
        weights.resolve_names(["nope"], "/tmp")


def test_resolve_reports_exactly_the_missing_files(tmp_path: Path) -> None:
    (tmp_path / "v2.pth").write_bytes(b"x")
    with pytest.raises(WeightsMissingError) as info:
        weights.resolve("v2", "sr", tmp_path)
    err = info.value
    assert sorted(err.missing) == ["BSRNet.pth", "v2-1_512-ema-pruned.ckpt"]
    assert err.weights_dir == str(tmp_path)
    assert f"python -m model download --version v2 --weights-dir {tmp_path}" in str(err)


def test_resolve_returns_paths_by_role(tmp_path: Path) -> None:
    for name in EXPECTED["v2"]["denoise"]:
        (tmp_path / name).write_bytes(b"x")
    paths = weights.resolve("v2", "denoise", tmp_path)
    assert paths == {
        "sd": tmp_path / "v2-1_512-ema-pruned.ckpt",
        "controlnet": tmp_path / "v2.pth",
        "stage1": tmp_path / "scunet_color_real_psnr.pth",
    }
    missing = [w.filename for w in weights.missing_files("v2", tmp_path)]
    assert missing == [
        "BSRNet.pth",
        "face_swinir_v1.ckpt",
        "detection_Resnet50_Final.pth",
        "parsing_parsenet.pth",
    ]
    assert [w.filename for w in weights.missing_files("v2", tmp_path, tasks=["sr", "face"])] == missing[:2]


def test_weights_dir_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(weights.WEIGHTS_DIR_ENV, raising=False)
    assert weights.default_weights_dir() == Path("weights")
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(tmp_path))
    assert weights.default_weights_dir() == tmp_path
    with pytest.raises(WeightsMissingError) as info:
        weights.resolve("v1", "face")
    assert info.value.weights_dir == str(tmp_path)


def test_version_files_deduplicates() -> None:
    names = [w.name for w in weights.version_files("v2.1")]
    assert names == [
        "sd_v2.1_zsnr",
        "v2.1",
        "swinir_realesrgan",
        "swinir_face",
        "retinaface_resnet50",
        "parsenet",
    ]


@pytest.mark.parametrize("version", ["v2", "v2.1"])
def test_unaligned_face_needs_the_sr_and_face_files_and_the_face_nets(version: str) -> None:
    files = {role: w.filename for role, w in weights.required(version, "unaligned_face").items()}
    sd, controlnet, background = EXPECTED[version]["sr"]
    assert files == {
        "sd": sd,
        "controlnet": controlnet,
        "stage1": background,
        "face_stage1": EXPECTED[version]["face"][2],
        "face_detector": "detection_Resnet50_Final.pth",
        "face_parser": "parsing_parsenet.pth",
    }
    assert weights.version_tasks(version) == weights.TASKS


def test_v1_has_no_unaligned_face() -> None:
    assert weights.version_tasks("v1") == weights.NET_TASKS
    with pytest.raises(InvalidInputError, match="not available with v1"):
        weights.required("v1", "unaligned_face")
    assert not any(w.role.startswith("face_") for w in weights.version_files("v1"))


# --- downloads against a local server ------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    files: dict[str, bytes]
    requests: list[tuple[str, str | None]]
    honour_range: bool
    cut_after: int  # > 0: the next response sends only this many body bytes, then drops the connection


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        srv = self.server
        rng = self.headers.get("Range")
        srv.requests.append((self.path, rng))
        data = srv.files.get(self.path.lstrip("/"))
        if data is None:
            self.send_error(404)
            return
        start = 0
        if rng and srv.honour_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.cut_after:
            body, srv.cut_after = body[: srv.cut_after], 0
            self.close_connection = True
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.files, srv.requests, srv.honour_range, srv.cut_after = {}, [], True, 0
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def _url(srv: _Server) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}"


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(weights.time, "sleep", lambda _s: None)


def test_download_by_name(server: _Server, tmp_path: Path) -> None:
    server.files = {"v2.pth": os.urandom(300_000), "BSRNet.pth": os.urandom(1000)}
    paths = weights.download(["v2", "bsrnet"], tmp_path, base_url=_url(server), progress=False)
    assert paths == {"v2": tmp_path / "v2.pth", "bsrnet": tmp_path / "BSRNet.pth"}
    assert paths["v2"].read_bytes() == server.files["v2.pth"]
    assert paths["bsrnet"].read_bytes() == server.files["BSRNet.pth"]
    assert not list(tmp_path.glob("*.part"))
    # present files are not fetched again
    server.requests.clear()
    weights.download(["v2"], tmp_path, base_url=_url(server), progress=False)
    assert server.requests == []


def test_resume_from_part_file(server: _Server, tmp_path: Path) -> None:
    data = os.urandom(200_000)
    server.files = {"x.bin": data}
    (tmp_path / "x.bin.part").write_bytes(data[:70_000])
    out = weights.download_file(f"{_url(server)}/x.bin", tmp_path / "x.bin", progress=False)
    assert out.read_bytes() == data
    assert server.requests == [("/x.bin", "bytes=70000-")]


def test_interrupted_download_resumes_with_range(server: _Server, tmp_path: Path) -> None:
    data = os.urandom(500_000)
    server.files, server.cut_after = {"x.bin": data}, 123_456
    out = weights.download_file(f"{_url(server)}/x.bin", tmp_path / "x.bin", progress=False, retries=2)
    assert out.read_bytes() == data
    assert server.requests == [("/x.bin", None), ("/x.bin", "bytes=123456-")]


def test_server_ignoring_range_restarts(server: _Server, tmp_path: Path) -> None:
    data = os.urandom(50_000)
    server.files, server.honour_range = {"x.bin": data}, False
    (tmp_path / "x.bin.part").write_bytes(b"garbage that must not stay in front")
    out = weights.download_file(f"{_url(server)}/x.bin", tmp_path / "x.bin", progress=False)
    assert out.read_bytes() == data


def test_complete_part_file_is_finished_without_body(server: _Server, tmp_path: Path) -> None:
    data = os.urandom(10_000)
    server.files = {"x.bin": data}
    (tmp_path / "x.bin.part").write_bytes(data)
    out = weights.download_file(f"{_url(server)}/x.bin", tmp_path / "x.bin", progress=False)
    assert out.read_bytes() == data
    assert server.requests == [("/x.bin", "bytes=10000-")]  # answered 416: already complete


def test_sha256_is_checked(server: _Server, tmp_path: Path) -> None:
    data = os.urandom(5_000)
    server.files = {"x.bin": data}
    with pytest.raises(ModelError, match="sha256"):
        weights.download_file(f"{_url(server)}/x.bin", tmp_path / "x.bin", progress=False, sha256="0" * 64)
    assert not (tmp_path / "x.bin").exists() and not (tmp_path / "x.bin.part").exists()
    good = hashlib.sha256(data).hexdigest()
    out = weights.download_file(f"{_url(server)}/x.bin", tmp_path / "x.bin", progress=False, sha256=good)
    assert out.read_bytes() == data


def test_http_error_is_reported(server: _Server, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="HTTP 404"):
        weights.download_file(f"{_url(server)}/missing.bin", tmp_path / "missing.bin", progress=False)
    assert not (tmp_path / "missing.bin").exists()


def test_unreachable_server_gives_up(tmp_path: Path) -> None:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    port = srv.server_address[1]
    srv.server_close()  # nothing listens there any more
    with pytest.raises(ModelError, match="2 attempts"):
        weights.download_file(f"http://127.0.0.1:{port}/x.bin", tmp_path / "x.bin", progress=False, retries=1)


def test_download_version_fetches_every_file(server: _Server, tmp_path: Path) -> None:
    names = [w.filename for w in weights.version_files("v1")]
    server.files = {n: n.encode() * 10 for n in names}
    paths = weights.download_version("v1", tmp_path, base_url=_url(server), progress=False)
    assert [p.name for p in paths] == names
    assert weights.resolve("v1", "face", tmp_path)["controlnet"].read_bytes() == b"v1_face.pth" * 10


def test_hf_hub_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[dict[str, str]] = []

    def fake_hf_hub_download(**kwargs: str) -> str:
        calls.append(kwargs)
        target = Path(kwargs["local_dir"]) / kwargs["filename"]
        target.write_bytes(b"w")
        return str(target)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hf_hub_download)
    paths = weights.download(["v2"], tmp_path, use_hf_hub=True, progress=False)
    assert calls == [
        {"repo_id": "lxq007/DiffBIR-v2", "filename": "v2.pth", "revision": "main", "local_dir": str(tmp_path)}
    ]
    assert paths["v2"].read_bytes() == b"w"
