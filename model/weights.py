"""Registry of the official DiffBIR weight files, which ones each version/task needs, and their download.

URLs are those of the reference repository (XPixelGroup/DiffBIR, `diffbir/inference/pretrained_models.py`).
Downloads use plain HTTPS with httpx: resumable (HTTP Range into `<file>.part`), checked against the announced
length (and sha256 when known), renamed into place atomically, and locked so two workers never write the
same file. `use_hf_hub=True` fetches Hugging Face files through `huggingface_hub` (its auth) instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

import httpx
from tqdm import tqdm

from model.errors import InvalidInputError, ModelError, WeightsMissingError

log = logging.getLogger(__name__)

Role = Literal["sd", "controlnet", "stage1", "face_detector", "face_parser"]
VERSIONS: tuple[str, ...] = ("v1", "v2", "v2.1")
# Tasks run by one ControlLDM and one stage-1 net each.
NET_TASKS: tuple[str, ...] = ("sr", "face", "denoise")
# Whole photos with small, unaligned faces (`model/faces/`): the face and sr tasks plus a face detector and
# parser; upstream offers it from v2 on.
UNALIGNED_FACE = "unaligned_face"
TASKS: tuple[str, ...] = (*NET_TASKS, UNALIGNED_FACE)
WEIGHTS_DIR_ENV = "DIFFBIR_WEIGHTS_DIR"
DEFAULT_WEIGHTS_DIR = "weights"
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class WeightFile:
    name: str
    filename: str
    url: str
    role: Role
    versions: tuple[str, ...]
    description: str
    stage1_kind: str | None = None  # "swinir" | "bsrnet" | "scunet" for role "stage1"
    sha256: str | None = None  # verified after download when known


_HF_V2 = "https://huggingface.co/lxq007/DiffBIR-v2/resolve/main"
_HF_V1 = "https://huggingface.co/lxq007/DiffBIR/resolve/main"
_KAIR = "https://github.com/cszn/KAIR/releases/download/v1.0"
# facexlib's release files, at the URLs its `init_detection_model` / `init_parsing_model` fetch at run time;
# facexlib publishes no checksum for them (it downloads with `hash_prefix=None`), so none is checked here.
_FACEXLIB = "https://github.com/xinntao/facexlib/releases/download"

REGISTRY: dict[str, WeightFile] = {
    w.name: w
    for w in (
        WeightFile(
            "bsrnet",
            "BSRNet.pth",
            f"{_KAIR}/BSRNet.pth",
            "stage1",
            ("v2",),
            "BSRNet (BSRGAN) x4 super-resolution, v2 sr",
            "bsrnet",
        ),
        WeightFile(
            "scunet_psnr",
            "scunet_color_real_psnr.pth",
            f"{_KAIR}/scunet_color_real_psnr.pth",
            "stage1",
            ("v2",),
            "SCUNet-PSNR denoiser, v2 denoise",
            "scunet",
        ),
        WeightFile(
            "swinir_general",
            "general_swinir_v1.ckpt",
            f"{_HF_V1}/general_swinir_v1.ckpt",
            "stage1",
            ("v1",),
            "SwinIR trained on ImageNet with Real-ESRGAN degradation, v1 sr/denoise",
            "swinir",
        ),
        WeightFile(
            "swinir_face",
            "face_swinir_v1.ckpt",
            f"{_HF_V1}/face_swinir_v1.ckpt",
            "stage1",
            VERSIONS,
            "SwinIR trained on FFHQ (from DifFace), face task of every version",
            "swinir",
        ),
        WeightFile(
            "swinir_realesrgan",
            "realesrgan_s4_swinir_100k.pth",
            f"{_HF_V2}/realesrgan_s4_swinir_100k.pth",
            "stage1",
            ("v2.1",),
            "SwinIR with Real-ESRGAN degradation, v2.1 sr/denoise",
            "swinir",
        ),
        WeightFile(
            "retinaface_resnet50",
            "detection_Resnet50_Final.pth",
            f"{_FACEXLIB}/v0.1.0/detection_Resnet50_Final.pth",
            "face_detector",
            ("v2", "v2.1"),
            "RetinaFace (ResNet-50) face detector with 5 landmarks, facexlib; unaligned_face",
        ),
        WeightFile(
            "parsenet",
            "parsing_parsenet.pth",
            f"{_FACEXLIB}/v0.2.2/parsing_parsenet.pth",
            "face_parser",
            ("v2", "v2.1"),
            "ParseNet face parsing (19 classes), facexlib; soft masks of unaligned_face",
        ),
        WeightFile(
            "sd_v2.1",
            "v2-1_512-ema-pruned.ckpt",
            "https://huggingface.co/stabilityai/stable-diffusion-2-1-base/resolve/main/v2-1_512-ema-pruned.ckpt",
            "sd",
            ("v1", "v2"),
            "Stable Diffusion 2.1 base (eps prediction)",
        ),
        WeightFile(
            "sd_v2.1_zsnr",
            "sd2.1-base-zsnr-laionaes5.ckpt",
            f"{_HF_V2}/sd2.1-base-zsnr-laionaes5.ckpt",
            "sd",
            ("v2.1",),
            "Stable Diffusion 2.1 base fine-tuned with zero terminal SNR (v prediction)",
        ),
        WeightFile(
            "v1_general",
            "v1_general.pth",
            f"{_HF_V2}/v1_general.pth",
            "controlnet",
            ("v1",),
            "IRControlNet v1, general images",
        ),
        WeightFile(
            "v1_face", "v1_face.pth", f"{_HF_V2}/v1_face.pth", "controlnet", ("v1",), "IRControlNet v1, faces"
        ),
        WeightFile("v2", "v2.pth", f"{_HF_V2}/v2.pth", "controlnet", ("v2",), "IRControlNet v2, all tasks"),
        WeightFile(
            "v2.1",
            "DiffBIR_v2.1.pt",
            f"{_HF_V2}/DiffBIR_v2.1.pt",
            "controlnet",
            ("v2.1",),
            "IRControlNet v2.1, all tasks",
        ),
    )
}

# version -> task -> role -> registry name (pretrained_models.py's docstring and the reference README;
# unaligned_face: upstream's `unaligned_bfr_loop.py`, which refuses v1).
REQUIREMENTS: dict[str, dict[str, dict[str, str]]] = {
    "v1": {
        "sr": {"sd": "sd_v2.1", "controlnet": "v1_general", "stage1": "swinir_general"},
        "denoise": {"sd": "sd_v2.1", "controlnet": "v1_general", "stage1": "swinir_general"},
        "face": {"sd": "sd_v2.1", "controlnet": "v1_face", "stage1": "swinir_face"},
    },
    "v2": {
        "sr": {"sd": "sd_v2.1", "controlnet": "v2", "stage1": "bsrnet"},
        "denoise": {"sd": "sd_v2.1", "controlnet": "v2", "stage1": "scunet_psnr"},
        "face": {"sd": "sd_v2.1", "controlnet": "v2", "stage1": "swinir_face"},
        UNALIGNED_FACE: {
            "sd": "sd_v2.1",
            "controlnet": "v2",
            "stage1": "bsrnet",  # the background, restored as sr
            "face_stage1": "swinir_face",
            "face_detector": "retinaface_resnet50",
            "face_parser": "parsenet",
        },
    },
    "v2.1": {
        "sr": {"sd": "sd_v2.1_zsnr", "controlnet": "v2.1", "stage1": "swinir_realesrgan"},
        "denoise": {"sd": "sd_v2.1_zsnr", "controlnet": "v2.1", "stage1": "swinir_realesrgan"},
        "face": {"sd": "sd_v2.1_zsnr", "controlnet": "v2.1", "stage1": "swinir_face"},
        UNALIGNED_FACE: {
            "sd": "sd_v2.1_zsnr",
            "controlnet": "v2.1",
            "stage1": "swinir_realesrgan",  # the background, restored as sr
            "face_stage1": "swinir_face",
            "face_detector": "retinaface_resnet50",
            "face_parser": "parsenet",
        },
    },
}


def default_weights_dir() -> Path:
    """`$DIFFBIR_WEIGHTS_DIR`, else `./weights`."""
    return Path(os.environ.get(WEIGHTS_DIR_ENV) or DEFAULT_WEIGHTS_DIR)


def _dir(weights_dir: str | Path | None) -> Path:
    return Path(weights_dir) if weights_dir is not None else default_weights_dir()


def required(version: str, task: str) -> dict[str, WeightFile]:
    """role -> WeightFile needed to run `task` with `version`."""
    if version not in REQUIREMENTS:
        raise InvalidInputError(f"unknown version {version!r}; expected one of {list(VERSIONS)}")
    if task in TASKS and task not in REQUIREMENTS[version]:
        raise InvalidInputError(f"task {task!r} is not available with {version} (as upstream: from v2 on)")
    if task not in REQUIREMENTS[version]:
        raise InvalidInputError(f"unknown task {task!r}; expected one of {list(TASKS)}")
    return {role: REGISTRY[name] for role, name in REQUIREMENTS[version][task].items()}


def version_tasks(version: str) -> tuple[str, ...]:
    """The tasks `version` can run (v1 has no unaligned_face)."""
    if version not in REQUIREMENTS:
        raise InvalidInputError(f"unknown version {version!r}; expected one of {list(VERSIONS)}")
    return tuple(t for t in TASKS if t in REQUIREMENTS[version])


def version_files(version: str, tasks: Iterable[str] | None = None) -> list[WeightFile]:
    """Every file `version` needs for `tasks` (default: all it runs), without duplicates, stably ordered."""
    tasks = version_tasks(version) if tasks is None else tasks
    names = dict.fromkeys(w.name for task in tasks for w in required(version, task).values())
    return [REGISTRY[n] for n in names]


def download_hint(version: str | None, weights_dir: Path) -> str:
    version_arg = f" --version {version}" if version else ""
    return f"Download them with: python -m model download{version_arg} --weights-dir {weights_dir}"


def resolve_names(
    names: Iterable[str], weights_dir: str | Path | None = None, version: str | None = None
) -> dict[str, Path]:
    """name -> path of registry files on disk; raises `WeightsMissingError` listing every absent file."""
    root = _dir(weights_dir)
    files = [_lookup(n) for n in names]
    missing = [w.filename for w in files if not (root / w.filename).is_file()]
    if missing:
        raise WeightsMissingError(missing, str(root), download_hint(version, root))
    return {w.name: root / w.filename for w in files}


def resolve(version: str, task: str, weights_dir: str | Path | None = None) -> dict[str, Path]:
    """role ("sd", "controlnet", "stage1") -> path of the file `task` needs with `version`."""
    files = required(version, task)
    paths = resolve_names([w.name for w in files.values()], weights_dir, version=version)
    return {role: paths[w.name] for role, w in files.items()}


def _lookup(name: str) -> WeightFile:
    if name not in REGISTRY:
        raise InvalidInputError(f"unknown weight file {name!r}; known: {sorted(REGISTRY)}")
    return REGISTRY[name]


# ------------------------------------------------------------------------------------------------------------
# Download


def download(
    names: Iterable[str],
    weights_dir: str | Path | None = None,
    *,
    progress: bool = True,
    base_url: str | None = None,
    use_hf_hub: bool = False,
    retries: int = 3,
) -> dict[str, Path]:
    """Fetch registry files that are not on disk yet; returns name -> path for all of them.

    `base_url` replaces each file's URL by `{base_url}/{filename}` (a mirror). Interrupted downloads resume
    from their `.part` file, also across calls.
    """
    root = _dir(weights_dir)
    root.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for name in names:
        w = _lookup(name)
        dest = root / w.filename
        if not dest.is_file():
            url = f"{base_url.rstrip('/')}/{w.filename}" if base_url else w.url
            if use_hf_hub and _hf_parts(url) is not None:
                _download_hf(url, root)
            else:
                download_file(url, dest, progress=progress, sha256=w.sha256, retries=retries)
        out[name] = dest
    return out


def download_version(
    version: str,
    weights_dir: str | Path | None = None,
    *,
    progress: bool = True,
    tasks: Iterable[str] | None = None,
    **kwargs: object,
) -> list[Path]:
    """Fetch every file `version` needs (all tasks by default); returns their paths."""
    names = [w.name for w in version_files(version, tasks)]
    return list(download(names, weights_dir, progress=progress, **kwargs).values())  # type: ignore[arg-type]


def download_file(
    url: str,
    dest: str | Path,
    *,
    progress: bool = True,
    sha256: str | None = None,
    retries: int = 3,
    timeout: float = 60.0,
    client: httpx.Client | None = None,
) -> Path:
    """Download `url` to `dest` through `dest.part`, resuming with HTTP Range after failures or restarts."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    with _locked(dest.with_name(f".{dest.name}.lock")):
        if dest.is_file():  # another process finished it while we waited for the lock
            return dest
        owns_client = client is None
        http = client or httpx.Client(follow_redirects=True, timeout=timeout, headers=_auth_headers(url))
        try:
            for attempt in range(retries + 1):
                try:
                    _fetch_into(http, url, part, progress, dest.name)
                    break
                except (httpx.TransportError, _IncompleteError) as exc:
                    if attempt == retries:
                        raise ModelError(f"download of {url} failed ({retries + 1} attempts): {exc}") from exc
                    wait = min(2**attempt, 30)
                    log.warning("download of %s interrupted (%s); resuming in %ss", url, exc, wait)
                    time.sleep(wait)
        finally:
            if owns_client:
                http.close()
        if sha256 is not None:
            digest = _sha256(part)
            if digest != sha256.lower():
                part.unlink()
                raise ModelError(f"{dest.name}: sha256 {digest} does not match the expected {sha256}")
        os.replace(part, dest)
    return dest


class _IncompleteError(Exception):
    """The server closed the stream before the announced length (retried with Range)."""


def _fetch_into(http: httpx.Client, url: str, part: Path, progress: bool, label: str) -> None:
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with http.stream("GET", url, headers=headers) as r:
        if r.status_code == 416 and have:  # nothing left to fetch, or the .part is bigger than the file
            total = _total_from_content_range(r.headers.get("content-range"))
            if total == have:
                return
            part.unlink()
            raise _IncompleteError(f"server refused to resume at byte {have} (size {total}); restarting")
        if r.status_code not in (200, 206):
            raise ModelError(f"download of {url} failed: HTTP {r.status_code}")
        if r.status_code == 200:
            have = 0  # server ignored the Range header: start over
        total = _expected_total(r, have)
        with (
            open(part, "ab" if have else "wb") as f,
            tqdm(
                total=total,
                initial=have,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=label,
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            # no chunk_size: httpx would hold back up to that many bytes, lost if the connection drops
            for chunk in r.iter_bytes():
                f.write(chunk)
                bar.update(len(chunk))
    size = part.stat().st_size
    if total is not None and size != total:
        if size > total:
            part.unlink()
        raise _IncompleteError(f"got {size} of {total} bytes")


def _expected_total(r: httpx.Response, have: int) -> int | None:
    if r.status_code == 206:
        total = _total_from_content_range(r.headers.get("content-range"))
        if total is not None:
            return total
    length = r.headers.get("content-length")
    if length is None or r.headers.get("content-encoding"):
        return None
    return int(length) + (have if r.status_code == 206 else 0)


def _total_from_content_range(value: str | None) -> int | None:
    match = re.search(r"/(\d+)\s*$", value or "")
    return int(match.group(1)) if match else None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[IO[bytes]]:
    """Exclusive advisory lock, so concurrent workers do not write the same `.part` file.

    The lock file is left in place: deleting it would let a waiting process lock the unlinked inode while a
    newcomer locks a fresh file, and both would write.
    """
    with open(path, "ab") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield f
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK_BYTES), b""):
            h.update(block)
    return h.hexdigest()


def _auth_headers(url: str) -> dict[str, str]:
    """Send `HF_TOKEN` to huggingface.co only (the public files need none; private mirrors on the Hub do)."""
    token = os.environ.get("HF_TOKEN")
    host = httpx.URL(url).host
    if token and (host == "huggingface.co" or host.endswith(".huggingface.co")):
        return {"Authorization": f"Bearer {token}"}
    return {}


_HF_RESOLVE = re.compile(r"^https://huggingface\.co/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


def _hf_parts(url: str) -> tuple[str, str, str] | None:
    """(repo_id, revision, filename) of a `huggingface.co/<repo>/resolve/<rev>/<file>` URL."""
    match = _HF_RESOLVE.match(url)
    return (match.group(1), match.group(2), match.group(3)) if match else None


def _download_hf(url: str, root: Path) -> Path:
    from huggingface_hub import hf_hub_download

    parts = _hf_parts(url)
    assert parts is not None
    repo_id, revision, filename = parts
    return Path(hf_hub_download(repo_id=repo_id, filename=filename, revision=revision, local_dir=str(root)))


def missing_files(
    version: str, weights_dir: str | Path | None = None, tasks: Iterable[str] | None = None
) -> list[WeightFile]:
    """Files of `version` (for `tasks`) that are not in `weights_dir`."""
    root = _dir(weights_dir)
    return [w for w in version_files(version, tasks) if not (root / w.filename).is_file()]


def registry_table() -> Mapping[str, WeightFile]:
    """Read-only view of the registry (for listings and docs)."""
    return dict(REGISTRY)
