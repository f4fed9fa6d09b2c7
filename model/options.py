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
from model.guidance import LOSSES as GUIDANCE_LOSSES
from model.guidance import SPACES as GUIDANCE_SPACES
from model.guidance import WINDOW_START, WINDOW_STOP
from model.inputs import MAX_UPSCALE
from model.sampling.hparams import MAX_LMS_ORDER, SamplerParams
from model.sampling.loop import START_POINTS
from model.sampling.registry import SAMPLERS as SAMPLER_SPECS
from model.weights import TASKS, VERSIONS

ProgressFn = Callable[[str, int, int], None]  # (stage, step, total)
CancelFn = Callable[[], bool]  # True -> CanceledError at the next check

SAMPLERS: tuple[str, ...] = tuple(SAMPLER_SPECS)
#: The sampler hyper-parameters each sampler reads (upstream passes each solver only these); setting one a
#: sampler does not read is refused rather than silently ignored.
SAMPLER_HPARAMS: dict[str, tuple[str, ...]] = {name: spec.hparams for name, spec in SAMPLER_SPECS.items()}
HPARAMS: tuple[str, ...] = ("s_churn", "s_tmin", "s_tmax", "s_noise", "eta", "order")
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
STAGES = ("stage1", "vae_encode", "sampler", "vae_decode", "postprocess")  # RestoreResult.timings keys
MAX_STEPS = 1000  # the training schedule's length: no sampler can take more steps
MAX_CFG_SCALE = 30.0
# upstream's `seed_everything` bound (numpy seeds are 32-bit); also exact in JavaScript numbers.
MAX_SEED = 2**32 - 1
MAX_TILE = 4096  # px: larger windows than this are no tiling at all on any image we accept
SWINIR_TILE_MULTIPLE = 64  # stage-1 tiles (SwinIR's window padding; see model/stage1.py)
LATENT_TILE_MULTIPLE = 8  # px per latent cell: latent and VAE-decoder windows are whole cells

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
    # ControlNet residual scale (upstream `--strength`): 0 = no control at all, >1 over-steers.
    "strength": (0.0, 2.0),
    "noise_aug": (0, 999),  # a training timestep of the condition's diffusion (0 = off)
    # guidance window in training timesteps: guided where stop < t+1 < start (upstream's strict test)
    "guidance_start": (WINDOW_STOP, WINDOW_START),
    "guidance_stop": (WINDOW_STOP, WINDOW_START),
    "guidance_repeat": (1, 10),  # each repeat is one more gradient step (a VAE decode in rgb space)
    "s_churn": (0.0, 100.0),  # churn saturates at gamma = sqrt(2)-1 once s_churn >= steps
    "s_tmin": (0.0, 1e4),  # sigmas: 1e4 is the first EDM sigma here (model/sampling/edm.py)
    "s_tmax": (0.0, 1e4),
    "s_noise": (0.0, 2.0),
    "eta": (0.0, 2.0),
    "order": (1, MAX_LMS_ORDER),
    # tile windows and strides, px (None = the planner decides)
    "stage1_tile": (SWINIR_TILE_MULTIPLE, MAX_TILE),
    "stage1_stride": (LATENT_TILE_MULTIPLE, MAX_TILE),
    "vae_encode_tile": (2 * LATENT_TILE_MULTIPLE, MAX_TILE),
    "vae_decode_tile": (2 * LATENT_TILE_MULTIPLE, MAX_TILE),
    "latent_tile": (2 * LATENT_TILE_MULTIPLE, MAX_TILE),
    "latent_stride": (LATENT_TILE_MULTIPLE, MAX_TILE),
}
#: Integer options (the others in BOUNDS are real numbers).
INTEGER_OPTIONS = frozenset(
    {"steps", "seed", "noise_aug", "guidance_start", "guidance_stop", "guidance_repeat", "order"}
    | {name for name in BOUNDS if name.endswith(("_tile", "_stride"))}
)
#: Multiples a tile option must be of: SwinIR's window for stage 1, whole latent cells elsewhere.
TILE_MULTIPLES: dict[str, int] = {
    "stage1_tile": SWINIR_TILE_MULTIPLE,
    "stage1_stride": LATENT_TILE_MULTIPLE,
    "vae_encode_tile": LATENT_TILE_MULTIPLE,
    "vae_decode_tile": LATENT_TILE_MULTIPLE,
    "latent_tile": LATENT_TILE_MULTIPLE,
    "latent_stride": LATENT_TILE_MULTIPLE,
}
#: stride option -> the tile option it needs.
TILE_STRIDES: dict[str, str] = {"stage1_stride": "stage1_tile", "latent_stride": "latent_tile"}
#: Upstream `inference.py` flag of each option (docs/model.md's table; the CLI's help).
UPSTREAM_FLAGS: dict[str, str] = {
    "task": "--task",
    "upscale": "--upscale",
    "fidelity": "--guidance --g_scale",
    "steps": "--steps",
    "sampler": "--sampler",
    "seed": "--seed",
    "prompt": "--pos_prompt",
    "negative_prompt": "--neg_prompt",
    "cfg_scale": "--cfg_scale",
    "color_fix": "(fixed: wavelet)",
    "strength": "--strength",
    "noise_aug": "--noise_aug",
    "start_point": "--start_point_type",
    "rescale_cfg": "--rescale_cfg",
    "guidance_space": "--g_space",
    "guidance_loss": "--g_loss",
    "guidance_start": "--g_start",
    "guidance_stop": "--g_stop",
    "guidance_repeat": "--g_repeat",
    "s_churn": "--s_churn",
    "s_tmin": "--s_tmin",
    "s_tmax": "--s_tmax",
    "s_noise": "--s_noise",
    "eta": "--eta",
    "order": "--order",
    "stage1_tile": "--cleaner_tiled --cleaner_tile_size",
    "stage1_stride": "--cleaner_tile_stride",
    "vae_encode_tile": "--vae_encoder_tiled --vae_encoder_tile_size",
    "vae_decode_tile": "--vae_decoder_tiled --vae_decoder_tile_size",
    "latent_tile": "--cldm_tiled --cldm_tile_size",
    "latent_stride": "--cldm_tile_stride",
}
#: Options whose default is the weights version's (model/presets.py `version_defaults`): None in a request
#: means "the official value of the version that runs it".
VERSION_DEFAULTED = (
    "sampler",
    "steps",
    "cfg_scale",
    "prompt",
    "negative_prompt",
    "strength",
    "noise_aug",
    "start_point",
    "rescale_cfg",
)

__all__ = [
    "BOUNDS",
    "COLOR_FIXES",
    "GUIDANCE_LOSSES",
    "GUIDANCE_SPACES",
    "HPARAMS",
    "INTEGER_OPTIONS",
    "MAX_CFG_SCALE",
    "MAX_SEED",
    "MAX_STEPS",
    "MAX_UPSCALE",
    "OFFICIAL_DEFAULT_NEGATIVE_PROMPT",
    "PRECISIONS",
    "SAMPLERS",
    "SAMPLER_HPARAMS",
    "STAGES",
    "START_POINTS",
    "TASKS",
    "TILE_MULTIPLES",
    "TILE_STRIDES",
    "UPSTREAM_FLAGS",
    "VERSIONS",
    "VERSION_DEFAULTED",
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
    """One request's knobs. Fields in `VERSION_DEFAULTED` are None until `model.presets.resolve_options`
    fills them with the official values of the weights version that runs the request (the pipeline does
    that first); the sampler hyper-parameters stay None for a sampler that does not read them; tile options
    None = automatic (`model/planning.py`)."""

    task: str = "sr"  # one of TASKS
    upscale: float = 4.0  # output size / input size (sr); 1.0 for denoise/face
    fidelity: float = 0.5  # 0..1, see model/fidelity.py
    steps: int | None = None
    sampler: str | None = None  # one of SAMPLERS
    seed: int | None = None
    prompt: str | None = None
    negative_prompt: str | None = None
    cfg_scale: float | None = None
    color_fix: str = "wavelet"  # one of COLOR_FIXES
    # ControlNet and start point (upstream `--strength`, `--noise_aug`, `--start_point_type`, `--rescale_cfg`)
    strength: float | None = None
    noise_aug: int | None = None
    start_point: str | None = None  # one of START_POINTS
    rescale_cfg: bool | None = None
    # the guidance schedule `fidelity` runs with (model/guidance.py; upstream `--g_*`)
    guidance_space: str = "latent"  # one of GUIDANCE_SPACES
    guidance_loss: str = "mse"  # one of GUIDANCE_LOSSES; "w_mse" needs space "rgb"
    guidance_start: int = WINDOW_START
    guidance_stop: int = WINDOW_STOP
    guidance_repeat: int = 1
    # sampler hyper-parameters (SAMPLER_HPARAMS says which sampler reads which)
    s_churn: float | None = None
    s_tmin: float | None = None
    s_tmax: float | None = None
    s_noise: float | None = None
    eta: float | None = None
    order: int | None = None
    # tiles, px (upstream `--cleaner_tile_*`, `--vae_*_tile_size`, `--cldm_tile_*`)
    stage1_tile: int | None = None
    stage1_stride: int | None = None
    vae_encode_tile: int | None = None
    vae_decode_tile: int | None = None
    latent_tile: int | None = None
    latent_stride: int | None = None

    def validate(self) -> RestoreOptions:
        """Raise InvalidInputError for any value the pipeline cannot run (before any work is done). Unset
        (None) fields pass; the upscale factor is checked with the image size (`model/inputs.py`)."""
        _check_choice("task", self.task, TASKS)
        _check_choice("sampler", self.sampler, SAMPLERS)
        _check_choice("color_fix", self.color_fix, COLOR_FIXES)
        _check_choice("start_point", self.start_point, START_POINTS)
        _check_choice("guidance_space", self.guidance_space, GUIDANCE_SPACES)
        _check_choice("guidance_loss", self.guidance_loss, GUIDANCE_LOSSES)
        check_fidelity(self.fidelity)
        for name, (low, high) in BOUNDS.items():
            value = getattr(self, name)
            if value is None or name in ("upscale", "fidelity"):
                continue
            if name in INTEGER_OPTIONS:
                ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
                if not ok:
                    raise InvalidInputError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
            elif not isinstance(value, (int, float)) or not math.isfinite(value) or not low <= value <= high:
                raise InvalidInputError(f"{name} must be in [{low:g}, {high:g}], got {value!r}")
        if self.rescale_cfg is not None and not isinstance(self.rescale_cfg, bool):
            raise InvalidInputError(f"rescale_cfg must be a boolean, got {self.rescale_cfg!r}")
        if self.guidance_loss == "w_mse" and self.guidance_space != "rgb":
            raise InvalidInputError("guidance_loss 'w_mse' needs guidance_space 'rgb' (per-pixel weights)")
        if self.guidance_stop >= self.guidance_start - 1:
            raise InvalidInputError(
                f"the guidance window stop < t+1 < start is empty: start {self.guidance_start}, "
                f"stop {self.guidance_stop}"
            )
        self._check_hparams()
        self._check_tiles()
        return self

    def _check_hparams(self) -> None:
        given = [name for name in HPARAMS if getattr(self, name) is not None]
        if not given:
            return
        if self.sampler is None:
            raise InvalidInputError(f"{', '.join(given)}: name the sampler whose hyper-parameters these are")
        read = SAMPLER_HPARAMS[self.sampler]
        unread = [name for name in given if name not in read]
        if unread:
            raise InvalidInputError(
                f"sampler {self.sampler!r} does not read {', '.join(unread)} "
                f"(it reads: {', '.join(read) or 'none'})"
            )
        self.sampler_params()  # cross-checks (s_tmax >= s_tmin with the defaults of the others)

    def _check_tiles(self) -> None:
        for name, multiple in TILE_MULTIPLES.items():
            value = getattr(self, name)
            if value is not None and value % multiple:
                raise InvalidInputError(f"{name} must be a multiple of {multiple} px, got {value}")
        for stride, tile in TILE_STRIDES.items():
            s, t = getattr(self, stride), getattr(self, tile)
            if s is not None and (t is None or s > t):
                raise InvalidInputError(f"{stride} needs {tile}, and must not exceed it (got {s}, {t})")

    def sampler_params(self) -> SamplerParams:
        """The sampler's hyper-parameters: those given, upstream's defaults for the rest."""
        given = {name: getattr(self, name) for name in HPARAMS if getattr(self, name) is not None}
        return SamplerParams(**given)

    def stage2_settings(self) -> Stage2Settings:
        """The resolved ControlNet / start-point knobs (call on options `resolve_options` has filled)."""
        names = ("strength", "noise_aug", "start_point", "rescale_cfg")
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise InvalidInputError(f"unresolved options {missing}: run model.presets.resolve_options first")
        return Stage2Settings(
            start_point=str(self.start_point),
            noise_aug=int(self.noise_aug or 0),
            rescale_cfg=bool(self.rescale_cfg),
            strength=float(self.strength or 0.0),
        )

    def batch_key(self) -> RestoreOptions:
        """Options that must agree for two images to share a stage-2 batch (everything but the seed)."""
        return dataclasses.replace(self, seed=None)


def _check_choice(name: str, value: str | None, choices: tuple[str, ...]) -> None:
    if value is not None and value not in choices:
        raise InvalidInputError(f"{name} must be one of {choices}, got {value!r}")


@dataclass
class RestoreResult:
    image: np.ndarray  # H x W x 3 uint8 RGB
    timings: dict[str, float]  # seconds: the STAGES and "total"
    peak_memory_bytes: int | None  # CUDA peak during this call, None on CPU
    seed: int
    sampler_steps: int  # the sampler's own steps (upstream DDIM may take one more than asked)
    conversions: list[str] = field(default_factory=list)  # input conversions (model/inputs.py)
    faces: int | None = None  # unaligned_face: how many faces were found and restored (0: background only)
    options: RestoreOptions | None = None  # as run: version defaults filled in, the seed used
    version: str | None = None  # the weights version that ran it


@dataclass(frozen=True)
class Stage2Settings:
    """Reference stage-2 knobs that are fixed per release (not user options; see `model/presets.py`)."""

    start_point: str = "noise"  # "noise" | "cond" (x_T = q_sample(c_img, 999))
    noise_aug: int = 0  # diffuse c_img to this training step (0 = off)
    rescale_cfg: bool = False
    strength: float = 1.0  # ControlNet residual scale
