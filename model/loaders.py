"""The nets a pipeline runs for a (preset, version, tasks): a ControlLDM and a stage-1 net per task, on the
requested device and precision.

`full` reads the version's official files from the weights directory (through the converted safetensors
cache when `python -m model convert` wrote one; `model/loading.py` builds each ControlLDM); `tiny` builds
deterministic random nets for smoke runs. Tasks that share a ControlNet share one model, and v1's two
ControlNets share one UNet, VAE and text tower.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from model import loading, weights
from model.cldm import ControlLDM
from model.errors import InvalidInputError, ModelError, WeightsMissingError
from model.options import PRECISIONS
from model.presets import STAGE1_KINDS, check_task, check_version
from model.stage1 import Stage1Net, build_stage1, load_stage1

log = logging.getLogger(__name__)

PRESETS = ("full", "tiny")
# Config presets official files can be read with (`load_nets(files_config=...)`).
FILES_CONFIGS = ("full", "tiny")

Nets = tuple[dict[str, ControlLDM], dict[str, Stage1Net]]  # (ControlLDM per task, stage-1 net per task)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None picks CUDA when available; asking for CUDA without it is an error, not a silent CPU run."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("device 'cuda' requested but CUDA is not available (use --device cpu)")
    return dev


def resolve_dtype(precision: str | None, device: torch.device) -> torch.dtype:
    """None picks fp16 on CUDA and fp32 on CPU; fp16 on CPU becomes bf16."""
    if precision is None:
        precision = "fp16" if device.type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise InvalidInputError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    dtype = PRECISIONS[precision]
    if device.type == "cpu" and dtype == torch.float16:
        log.warning("fp16 on CPU is slow and imprecise; using bf16 instead")
        dtype = torch.bfloat16
    return dtype


def load_nets(
    preset: str,
    version: str,
    tasks: Sequence[str],
    device: torch.device,
    dtype: torch.dtype,
    *,
    weights_dir: str | Path | None = None,
    files_config: str = "full",
    seed: int = 0,
) -> Nets:
    """The ControlLDM and stage-1 net of every task, in eval mode on `device` / `dtype`.

    `files_config` (preset `full` only) names the network sizes the official files are read with: "full"
    (SD 2.1 base, the real files) or "tiny" (official-layout files written from the reference's tiny
    weights, so the whole official loading path runs in tests). `seed` draws the tiny preset's weights."""
    check_version(version)
    for task in tasks:
        check_task(task)
    if preset == "tiny":
        log.warning(
            "preset 'tiny': RANDOM weights, NOT a restoration model -- outputs are noise-like; "
            "use it only to test plumbing (service smoke runs, CI)"
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            cldm = loading.init_tiny_random(seed=seed, diffusion=version)
            nets = {task: _tiny_stage1(version, task) for task in tasks}
        models = dict.fromkeys(tasks, cldm.to(device=device, dtype=dtype))
    elif preset == "full":
        if files_config not in FILES_CONFIGS:
            raise InvalidInputError(f"unknown files_config {files_config!r}; expected one of {FILES_CONFIGS}")
        models, nets = _load_full(version, tasks, weights_dir, device, dtype, files_config)
    else:
        raise InvalidInputError(f"unknown preset {preset!r}; expected one of {list(PRESETS)}")
    nets = {
        task: net.to(device=device, dtype=dtype).eval().requires_grad_(False) for task, net in nets.items()
    }
    return models, nets


def _tiny_stage1(version: str, task: str) -> Stage1Net:
    return build_stage1(STAGE1_KINDS[version][task], preset="tiny", device="cpu")


def converted_cache_path(weights_dir: str | Path | None, version: str, controlnet_name: str) -> Path:
    """Where `python -m model convert` writes the converted ControlLDM of a (version, controlnet)."""
    root = Path(weights_dir) if weights_dir is not None else weights.default_weights_dir()
    return root / "converted" / f"controlldm-{version}-{controlnet_name}.safetensors"


def _load_full(
    version: str,
    tasks: Sequence[str],
    weights_dir: str | Path | None,
    device: torch.device,
    dtype: torch.dtype,
    files_config: str = "full",
) -> Nets:
    """Official files of `version` for `tasks`; one SD copy shared by every ControlNet (v1 has two)."""
    needed = {task: weights.required(version, task) for task in tasks}
    names = list(dict.fromkeys(w.name for files in needed.values() for w in files.values()))
    try:
        paths = weights.resolve_names(names, weights_dir, version=version)
    except WeightsMissingError:
        # Files the converted cache replaces are not needed when the cache is there.
        paths = _resolve_with_cache(needed, version, weights_dir)
    models: dict[str, ControlLDM] = {}
    by_controlnet: dict[str, ControlLDM] = {}
    nets: dict[str, Stage1Net] = {}
    for task in tasks:
        files = needed[task]
        cn = files["controlnet"].name
        if cn not in by_controlnet:
            cache = converted_cache_path(weights_dir, version, cn)
            if by_controlnet:  # share UNet/VAE/text with the first model; only the ControlNet differs
                first = next(iter(by_controlnet.values()))
                other = _load_cldm(cache, paths, files, version, device, dtype, files_config)
                by_controlnet[cn] = ControlLDM(
                    first.cfg, first.diffusion, first.unet, other.controlnet, first.vae, first.text
                )
            else:
                by_controlnet[cn] = _load_cldm(cache, paths, files, version, device, dtype, files_config)
        models[task] = by_controlnet[cn]
        s1 = files["stage1"]
        nets[task] = load_stage1(
            s1.stage1_kind or STAGE1_KINDS[version][task], paths[s1.name], preset=files_config
        )
    return models, nets


def _load_cldm(
    cache: Path,
    paths: Mapping[str, Path],
    files: Mapping[str, Any],
    version: str,
    device: torch.device,
    dtype: torch.dtype,
    files_config: str = "full",
) -> ControlLDM:
    if cache.is_file():
        log.info("loading converted cache %s", cache)
        return loading.load_converted(cache, device=device, dtype=dtype)
    log.info("loading official checkpoints (run `python -m model convert` once for faster starts)")
    return loading.load_official(
        paths[files["sd"].name],
        paths[files["controlnet"].name],
        files_config,
        version,
        device=device,
        dtype=dtype,
    )


def _resolve_with_cache(
    needed: Mapping[str, Mapping[str, Any]], version: str, weights_dir: str | Path | None
) -> dict[str, Path]:
    """The files still needed when a converted cache stands in for a (version, controlnet)'s SD + ControlNet;
    raises WeightsMissingError naming those still missing."""
    names: list[str] = []
    for files in needed.values():
        cached = converted_cache_path(weights_dir, version, files["controlnet"].name).is_file()
        names += [w.name for role, w in files.items() if not (cached and role in ("sd", "controlnet"))]
    return weights.resolve_names(list(dict.fromkeys(names)), weights_dir, version=version)


def convert_version(
    version: str, weights_dir: str | Path | None = None, files_config: str = "full"
) -> list[Path]:
    """Write the converted safetensors cache of every ControlNet of `version` (what `python -m model convert`
    does); later `full` loads read these instead of the pickles. `files_config` as in `load_nets`."""
    written: list[Path] = []
    done: set[str] = set()
    for task in weights.version_tasks(version):
        files = weights.required(version, task)
        cn = files["controlnet"].name
        if cn in done:
            continue
        done.add(cn)
        paths = weights.resolve_names([files["sd"].name, cn], weights_dir, version=version)
        ldm = loading.load_official(paths[files["sd"].name], paths[cn], files_config, version)
        written.append(loading.save_converted(ldm, converted_cache_path(weights_dir, version, cn)))
        del ldm
    return written
