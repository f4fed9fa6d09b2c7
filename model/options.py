"""What a restore request may ask for and what it gets back: `RestoreOptions`, `RestoreResult`, and every
vocabulary and bound they are checked against.

Each vocabulary is defined once, where its implementations live, and read here: tasks and versions from the
weight registry (`model/weights.py`, which stays torch-free for light callers), samplers from the sampler
registry (`model/sampling/registry.py`), colour fixes from `model/colorfix.py`, the upscale bound from
`model/inputs.py`. The API's request schema is checked against this module by a contract test.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from model.colorfix import COLOR_FIXES
from model.errors import InvalidInputError
from model.fidelity import FIDELITY_RANGE, check_fidelity
from model.inputs import MAX_UPSCALE
from model.sampling.registry import SAMPLERS as SAMPLER_SPECS
from model.weights import TASKS, VERSIONS

ProgressFn = Callable[[str, int, int], None]  # (stage, step, total)
CancelFn = Callable[[], bool]  # True -> CanceledError at the next check

SAMPLERS: tuple[str, ...] = tuple(SAMPLER_SPECS)
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
STAGES = ("stage1", "vae_encode", "sampler", "vae_decode", "postprocess")  # RestoreResult.timings keys
MAX_STEPS = 1000  # the training schedule's length: no sampler can take more steps
MAX_CFG_SCALE = 30.0
# upstream's `seed_everything` bound (numpy seeds are 32-bit); also exact in JavaScript numbers.
MAX_SEED = 2**32 - 1

# The negative prompt of the official v1/v2 README commands; `RestoreOptions`'s default.
OFFICIAL_DEFAULT_NEGATIVE_PROMPT = "low quality, blurry, low-resolution, noisy, unsharp, weird textures"

#: Inclusive bounds of the numeric options: the one table validation reads, and the API's request schema is
#: contract-tested against (tests/contracts/test_params_match_options.py).
BOUNDS: dict[str, tuple[float, float]] = {
    "upscale": (1.0, MAX_UPSCALE),
    "fidelity": FIDELITY_RANGE,
    "steps": (1, MAX_STEPS),
    "seed": (0, MAX_SEED),
    "cfg_scale": (0.0, MAX_CFG_SCALE),
}

__all__ = [
    "BOUNDS",
    "COLOR_FIXES",
    "MAX_CFG_SCALE",
    "MAX_SEED",
    "MAX_STEPS",
    "MAX_UPSCALE",
    "OFFICIAL_DEFAULT_NEGATIVE_PROMPT",
    "PRECISIONS",
    "SAMPLERS",
    "STAGES",
    "TASKS",
    "VERSIONS",
    "CancelFn",
    "ProgressFn",
    "RestoreOptions",
    "RestoreResult",
    "Stage2Settings",
    "random_seed",
]


def random_seed() -> int:
    """A seed for a request that gave none, drawn from the whole range [0, MAX_SEED]."""
    return secrets.randbelow(MAX_SEED + 1)


@dataclass(frozen=True)
class RestoreOptions:
    task: str = "sr"  # one of TASKS
    upscale: float = 4.0  # output size / input size (sr); 1.0 for denoise/face
    fidelity: float = 0.5  # 0..1, see model/fidelity.py
    steps: int = 50
    sampler: str = "spaced"  # one of SAMPLERS; "spaced" is the reference DDPM
    seed: int | None = None
    prompt: str = ""
    negative_prompt: str = OFFICIAL_DEFAULT_NEGATIVE_PROMPT
    cfg_scale: float = 4.0
    color_fix: str = "wavelet"  # one of COLOR_FIXES

    def validate(self) -> RestoreOptions:
        """Raise InvalidInputError for any value the pipeline cannot run (before any work is done). The
        upscale factor is checked with the image size (`model/inputs.py`)."""
        if self.task not in TASKS:
            raise InvalidInputError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.sampler not in SAMPLERS:
            raise InvalidInputError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.color_fix not in COLOR_FIXES:
            raise InvalidInputError(f"color_fix must be one of {COLOR_FIXES}, got {self.color_fix!r}")
        low, high = BOUNDS["steps"]
        if not isinstance(self.steps, int) or not low <= self.steps <= high:
            raise InvalidInputError(f"steps must be an integer in [{low}, {high}], got {self.steps!r}")
        low, high = BOUNDS["seed"]
        if self.seed is not None and (not isinstance(self.seed, int) or not low <= self.seed <= high):
            raise InvalidInputError(f"seed must be an integer in [{low}, {high}], got {self.seed!r}")
        low, high = BOUNDS["cfg_scale"]
        if not math.isfinite(self.cfg_scale) or not low <= self.cfg_scale <= high:
            raise InvalidInputError(f"cfg_scale must be in [{low:g}, {high:g}], got {self.cfg_scale!r}")
        check_fidelity(self.fidelity)
        return self

    def batch_key(self) -> RestoreOptions:
        """Options that must agree for two images to share a stage-2 batch (everything but the seed)."""
        return dataclasses.replace(self, seed=None)


@dataclass
class RestoreResult:
    image: np.ndarray  # H x W x 3 uint8 RGB
    timings: dict[str, float]  # seconds: the STAGES and "total"
    peak_memory_bytes: int | None  # CUDA peak during this call, None on CPU
    seed: int
    sampler_steps: int
    conversions: list[str] = field(default_factory=list)  # input conversions (model/inputs.py)
    faces: int | None = None  # unaligned_face: how many faces were found and restored (0: background only)


@dataclass(frozen=True)
class Stage2Settings:
    """Reference stage-2 knobs that are fixed per release (not user options; see `model/presets.py`)."""

    start_point: str = "noise"  # "noise" | "cond" (x_T = q_sample(c_img, 999))
    noise_aug: int = 0  # diffuse c_img to this training step (0 = off)
    rescale_cfg: bool = False
    strength: float = 1.0  # ControlNet residual scale
