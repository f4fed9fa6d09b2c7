"""Learned metrics through pyiqa (IQA-PyTorch, the toolbox the DiffBIR paper's numbers come from): LPIPS,
NIQE, MUSIQ, MANIQA, CLIP-IQA and FID. A metric whose weights are not on disk is skipped BY NAME with the
reason, never silently.

Weights come from one folder laid out like torch.hub's cache (default: `torch.hub.get_dir()`, so files a
previous online pyiqa run fetched are found): `<dir>/pyiqa/` pyiqa's checkpoints (and NIQE's parameters),
`<dir>/checkpoints/` torchvision backbones (LPIPS), `<dir>/clip/` OpenAI CLIP (CLIP-IQA). MANIQA's ViT comes
from the Hugging Face cache (`HF_HOME`). Offline (the default), every fetch pyiqa would start is refused on
the spot and becomes the skip reason, naming the file and where it comes from.
"""

from __future__ import annotations

import contextlib
import io
import logging
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch

from model.quality.vocab import PASSTHROUGH, PYIQA_NAMES

log = logging.getLogger(__name__)


class WeightsAbsentError(RuntimeError):
    """A metric asked for a file that is not on disk while downloads are off."""


def default_weights_dir() -> Path:
    return Path(torch.hub.get_dir())


def _refuse_file(url: str, dst: str, *args: Any, **kwargs: Any) -> None:
    raise WeightsAbsentError(f"{dst} is missing (get it from {url}, or allow downloads)")


def _refuse_url(url: Any, *args: Any, **kwargs: Any) -> None:
    target = getattr(url, "full_url", url)
    raise WeightsAbsentError(f"not on disk and downloads are off: {target}")


@contextlib.contextmanager
def weights_from(folder: Path, allow_download: bool) -> Iterator[None]:
    """pyiqa, torch.hub and CLIP read (and, when allowed, download) their files under `folder`.

    pyiqa fetches from three places on first use (its own release files via torch.hub's downloader,
    torchvision's hub, CLIP's URL opener) plus the Hugging Face hub through timm; offline, each is replaced by
    a function that raises at once with the file it wanted, and the hub is put in offline mode (cached files
    still load). Patched only while metrics are being built, in this process."""
    from huggingface_hub import constants as hf_constants
    from pyiqa.utils import download_util

    old_hub = torch.hub.get_dir()
    torch.hub.set_dir(str(folder))
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(mock.patch.object(download_util, "DEFAULT_CACHE_DIR", str(folder / "pyiqa")))
            if not allow_download:
                stack.enter_context(mock.patch.object(download_util, "download_url_to_file", _refuse_file))
                stack.enter_context(mock.patch.object(torch.hub, "download_url_to_file", _refuse_file))
                stack.enter_context(mock.patch.object(urllib.request, "urlopen", _refuse_url))
                stack.enter_context(mock.patch.object(hf_constants, "HF_HUB_OFFLINE", True))
            yield
    finally:
        torch.hub.set_dir(old_hub)


def _hub_file(exc: BaseException) -> str | None:
    """`repo/filename` a Hugging Face hub lookup failed on, read from the failing frames (its error omits
    it)."""
    found = None
    tb = exc.__traceback__
    while tb is not None:
        local = tb.tb_frame.f_locals
        if isinstance(local.get("repo_id"), str) and isinstance(local.get("filename"), str):
            found = f"{local['repo_id']}/{local['filename']}"
        tb = tb.tb_next
    return found


def _reason(exc: BaseException) -> str:
    if isinstance(exc, WeightsAbsentError):
        return f"weights absent: {exc}"
    hub = _hub_file(exc)
    if hub:
        return f"weights absent: {hub} is not in the Hugging Face cache (HF_HOME) and downloads are off"
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"{type(exc).__name__}: {first}"


def pyiqa_name(name: str) -> str:
    if name.startswith(PASSTHROUGH):
        return name[len(PASSTHROUGH) :]
    if name not in PYIQA_NAMES:
        raise ValueError(f"unknown learned metric {name!r}; expected {sorted(PYIQA_NAMES)} or pyiqa:<name>")
    return PYIQA_NAMES[name]


def to_pyiqa(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """H x W x 3 uint8 -> [1, 3, H, W] float in [0, 1], pyiqa's input."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float().div(255).to(device)


class LearnedMetrics:
    """The learned metrics that could be built; `skipped` says why each other one could not."""

    def __init__(
        self,
        names: Sequence[str],
        device: str | torch.device = "cpu",
        weights_dir: Path | None = None,
        allow_download: bool = False,
    ) -> None:
        self.device = torch.device(device)
        self.weights_dir = weights_dir or default_weights_dir()
        self.metrics: dict[str, Any] = {}
        self.skipped: dict[str, str] = {}
        try:
            import pyiqa
        except ImportError as exc:
            why = f"pyiqa is not installed ({exc}); see docs/quality.md"
            self.skipped = dict.fromkeys(names, why)
            return
        for name in names:
            try:
                # pyiqa prints "Downloading ..." even for a fetch that is then refused: keep it off stdout
                chatter = io.StringIO()
                with (
                    weights_from(self.weights_dir, allow_download),
                    contextlib.redirect_stdout(chatter),
                ):
                    self.metrics[name] = pyiqa.create_metric(pyiqa_name(name), device=self.device)
            except Exception as exc:  # any failure to build one metric skips it, by name, with the reason
                self.skipped[name] = _reason(exc)
            finally:
                log.debug("pyiqa %s: %s", name, chatter.getvalue().strip())

    def mode(self, name: str) -> str:
        """'FR' (needs the reference image) or 'NR'; FID ('NR' in pyiqa) is scored per folder instead."""
        return str(self.metrics[name].metric_mode)

    @property
    def per_image(self) -> list[str]:
        return [n for n in self.metrics if pyiqa_name(n) != "fid"]

    @property
    def has_fid(self) -> bool:
        return any(pyiqa_name(n) == "fid" for n in self.metrics)

    @torch.inference_mode()
    def score(self, image: np.ndarray, reference: np.ndarray | None) -> dict[str, float]:
        """Every per-image metric that applies (full-reference ones need `reference`, same shape)."""
        out: dict[str, float] = {}
        x = to_pyiqa(image, self.device)
        for name in self.per_image:
            metric = self.metrics[name]
            if self.mode(name) == "FR":
                if reference is None:
                    continue
                value = metric(x, to_pyiqa(reference, self.device))
            else:
                value = metric(x)
            out[name] = float(torch.as_tensor(value).float().mean())
        return out

    def fid(self, folder: Path, reference_folder: Path) -> float | None:
        """FID between two image folders (pyiqa's clean-fid port); None when FID is not available."""
        for name, metric in self.metrics.items():
            if pyiqa_name(name) == "fid":
                return float(metric(str(folder), str(reference_folder), verbose=False))
        return None
