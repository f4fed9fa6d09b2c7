"""Reading checkpoint files and loading them strictly, with errors that say what does not fit.

One loader serves every official file (see the reference README, "How the official files are loaded"):
`torch.load` on CPU, unwrap a `"state_dict"` entry, then, if the FIRST key starts with `"module"`, drop the
first 7 characters of EVERY key. The rule is kept literally, so whatever the reference accepts loads here.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from model.errors import CheckpointMismatchError, ModelError

log = logging.getLogger(__name__)

StateDict = dict[str, Any]

TORCH_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
MODULE_PREFIX_LEN = len("module.")


def read_checkpoint(path: str | Path, *, trusted: bool = True, mmap: bool = False) -> Any:
    """The raw object stored in a checkpoint file (no unwrapping).

    `.safetensors` files are read with safetensors. Torch pickles are read with `weights_only=True` first;
    Lightning `.ckpt` files may hold non-tensor objects (hyper-parameters, callbacks) that this refuses;
    then a full unpickle is used only if `trusted` (files from our registry are; user uploads must not be).
    `mmap=True` maps torch zip files instead of reading them (lower peak RAM for multi-GB SD checkpoints).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        return load_file(str(path), device="cpu")
    if path.suffix not in TORCH_SUFFIXES:
        raise ModelError(
            f"unsupported checkpoint format {path.suffix!r} ({path}); expected .safetensors or "
            + "/".join(TORCH_SUFFIXES)
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        if not trusted:
            raise ModelError(f"{path} holds objects other than tensors and is not trusted: {exc}") from exc
        log.warning("%s needs a full unpickle (weights_only refused it: %s)", path, str(exc).splitlines()[0])
        return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)


def unwrap_state_dict(obj: Any) -> StateDict:
    """The reference's unwrapping: take a `"state_dict"` entry, then strip `module.` (by the first key)."""
    if not isinstance(obj, Mapping):
        raise ModelError(f"checkpoint holds a {type(obj).__name__}, expected a dict of tensors")
    sd = obj.get("state_dict", obj)
    if not isinstance(sd, Mapping):
        raise ModelError(f"checkpoint 'state_dict' entry is a {type(sd).__name__}, expected a tensor dict")
    keys = list(sd.keys())
    if keys and str(keys[0]).startswith("module"):
        return {k[MODULE_PREFIX_LEN:]: v for k, v in sd.items()}
    return dict(sd)


def load_state_dict(path: str | Path, *, trusted: bool = True, mmap: bool = False) -> StateDict:
    """State dict of a `.pth/.pt/.ckpt/.bin/.safetensors` file, unwrapped like the reference does."""
    return unwrap_state_dict(read_checkpoint(path, trusted=trusted, mmap=mmap))


def select_prefix(sd: Mapping[str, Any], prefix: str) -> StateDict:
    """Entries whose key starts with `prefix`, with the prefix removed (e.g. `first_stage_model.`)."""
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def check_state_dict(module: nn.Module, sd: Mapping[str, Any], what: str) -> None:
    """Raise `CheckpointMismatchError` unless `sd` has exactly the module's keys with the same shapes."""
    expected = module.state_dict(keep_vars=True)
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    mismatched = []
    for key, target in expected.items():
        if key in sd:
            source_shape = tuple(getattr(sd[key], "shape", ()))
            if source_shape != tuple(target.shape):
                mismatched.append((key, source_shape, tuple(target.shape)))
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(what, missing, unexpected, mismatched)


def fill_batchnorm_counters(module: nn.Module, sd: Mapping[str, Any]) -> StateDict:
    """`sd` plus the BatchNorm `num_batches_tracked` counters it lacks, at 0 -- what torch itself does when
    it loads a file saved before those counters existed (facexlib's detector and parser files may be), and
    which a strict check would otherwise report as missing. The counters only matter for training."""
    out = dict(sd)
    for key in module.state_dict():
        if key.endswith(".num_batches_tracked") and key not in out:
            out[key] = torch.tensor(0, dtype=torch.long)
    return out


def load_strict(module: nn.Module, sd: Mapping[str, Any], what: str, *, assign: bool = False) -> nn.Module:
    """Load `sd` into `module` with `strict=True`, after a readable check of keys and shapes.

    `assign=True` swaps the tensors in instead of copying (for modules built on the meta device).
    """
    check_state_dict(module, sd, what)
    module.load_state_dict(sd, strict=True, assign=assign)
    return module
