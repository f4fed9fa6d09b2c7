"""Public restoration parameters (``RestoreParams``): validated once at the API, stored in the job document.

The worker maps them onto the model's ``RestoreOptions`` (same names; ``output_format``, ``callback_url`` and
``webhook_events_filter`` are service concerns and do not reach the model). Bounds keep one request from
monopolising a GPU (``steps``) or the text encoder (prompt lengths).
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from common.formats import CONTENT_TYPES, ImageFormat

# The API's vocabulary, all of it here. It mirrors the model's restore options (tasks, samplers, colour
# fixes, default negative prompt, bounds) without importing them, since the API never imports torch;
# tests/contracts/test_params_match_options.py fails when the two sides disagree.
Task = Literal["sr", "face", "denoise", "unaligned_face"]
Sampler = Literal[
    "spaced",
    "ddim",
    "dpm++_m2",
    "edm_euler",
    "edm_euler_a",
    "edm_heun",
    "edm_dpm_2",
    "edm_dpm_2_a",
    "edm_lms",
    "edm_dpm++_2s_a",
    "edm_dpm++_sde",
    "edm_dpm++_2m",
    "edm_dpm++_2m_sde",
    "edm_dpm++_3m_sde",
    "dpmpp",
]
ColorFix = Literal["wavelet", "adain", "none"]
StartPoint = Literal["noise", "cond"]
GuidanceSpace = Literal["latent", "rgb"]
GuidanceLoss = Literal["mse", "w_mse"]
OutputFormat = ImageFormat
# Webhook events a job may ask for (Replicate's names; common.webhook_outbox sends them).
WebhookEvent = Literal["start", "completed"]
WEBHOOK_EVENTS: tuple[str, ...] = get_args(WebhookEvent)
TASKS: tuple[str, ...] = get_args(Task)
SAMPLERS: tuple[str, ...] = get_args(Sampler)
COLOR_FIXES: tuple[str, ...] = get_args(ColorFix)
START_POINTS: tuple[str, ...] = get_args(StartPoint)
GUIDANCE_SPACES: tuple[str, ...] = get_args(GuidanceSpace)
GUIDANCE_LOSSES: tuple[str, ...] = get_args(GuidanceLoss)
DEFAULT_NEGATIVE_PROMPT = "low quality, blurry, low-resolution, noisy, unsharp, weird textures"
MAX_PROMPT_CHARS = 500
MAX_SEED = 2**32 - 1
# The worker runs stage 2 (the diffusion) with the output's short side raised to this (the full presets'
# `model.planning.FULL_MIN_SHORT_EDGE`), and refuses jobs whose stage-2 image would exceed its pixel limit:
# the API applies the same rule at submit (a 1x60000 strip is refused there, not after queueing).
STAGE2_MIN_SHORT_EDGE = 512


def stage2_size(width: int, height: int, min_short_edge: int = STAGE2_MIN_SHORT_EDGE) -> tuple[int, int]:
    """(width, height) stage 2 runs at for an output of ``width`` x ``height`` (the model's
    ``Planner.diffusion_size``: the short side raised to ``min_short_edge``, the long one scaled and
    truncated)."""
    if min(width, height) >= min_short_edge:
        return width, height
    if width == height:
        return min_short_edge, min_short_edge
    if width < height:
        return min_short_edge, int(height * (min_short_edge / width))
    return int(width * (min_short_edge / height)), min_short_edge


MAX_TILE = 4096
# Sampler hyper-parameters and which sampler reads which (upstream passes each solver only these).
HPARAMS = ("s_churn", "s_tmin", "s_tmax", "s_noise", "eta", "order")
_CHURN = ("s_churn", "s_tmin", "s_tmax", "s_noise")
_ANCESTRAL = ("eta", "s_noise")
SAMPLER_HPARAMS: dict[str, tuple[str, ...]] = {
    "spaced": (),
    "ddim": (),
    "dpm++_m2": (),
    "edm_euler": _CHURN,
    "edm_euler_a": _ANCESTRAL,
    "edm_heun": _CHURN,
    "edm_dpm_2": _CHURN,
    "edm_dpm_2_a": _ANCESTRAL,
    "edm_lms": ("order",),
    "edm_dpm++_2s_a": _ANCESTRAL,
    "edm_dpm++_sde": _ANCESTRAL,
    "edm_dpm++_2m": (),
    "edm_dpm++_2m_sde": _ANCESTRAL,
    "edm_dpm++_3m_sde": _ANCESTRAL,
    "dpmpp": (),
}
# Fields whose default is the official value of the worker's weights version: None here, filled by the
# worker (the job document's ``resolved`` shows the values used).
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
TILE_MULTIPLES: dict[str, int] = {
    "stage1_tile": 64,
    "stage1_stride": 8,
    "vae_encode_tile": 8,
    "vae_decode_tile": 8,
    "latent_tile": 8,
    "latent_stride": 8,
}
TILE_STRIDES: dict[str, str] = {"stage1_stride": "stage1_tile", "latent_stride": "latent_tile"}
_BY_VERSION = " Default: the official value of the worker's weights version (GET /v1/models)."


class RestoreParams(BaseModel):
    """What the client may choose; every field has a default so an image alone is a valid request. Fields
    left unset (None) take the worker's weights-version defaults; the worker records what it used."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: Task = Field(
        "sr",
        description="sr: blind super-resolution; face: face restoration (an aligned face crop); denoise: "
        "blind denoising; unaligned_face: a whole photo whose faces are found, restored as faces and blended "
        "into the sr restoration of the rest (v2 and v2.1 workers).",
    )
    upscale: float = Field(4.0, ge=1.0, le=8.0, description="Output size / input size.")
    fidelity: float = Field(
        0.5, ge=0.0, le=1.0, description="0 = most generative (no guidance) .. 1 = closest to the input."
    )
    steps: int | None = Field(None, ge=1, le=100, description="Sampler steps." + _BY_VERSION)
    sampler: Sampler | None = Field(None, description="Sampler." + _BY_VERSION)
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED, description="Fixed seed for reproducible output (unset: drawn and recorded)."
    )
    cfg_scale: float | None = Field(
        None, ge=1.0, le=20.0, description="Classifier-free guidance scale." + _BY_VERSION
    )
    color_fix: ColorFix = "wavelet"
    output_format: OutputFormat = "png"
    prompt: str | None = Field(
        None, max_length=MAX_PROMPT_CHARS, description="Positive prompt." + _BY_VERSION
    )
    negative_prompt: str | None = Field(
        None, max_length=MAX_PROMPT_CHARS, description="Negative prompt." + _BY_VERSION
    )
    callback_url: str | None = Field(
        None, max_length=2048, description="http(s) URL notified (signed) when the job finishes."
    )
    # ControlNet and start point (upstream --strength, --noise_aug, --start_point_type, --rescale_cfg)
    strength: float | None = Field(
        None, ge=0.0, le=2.0, description="ControlNet strength; lower = more creative." + _BY_VERSION
    )
    noise_aug: int | None = Field(
        None, ge=0, le=999, description="Noise augmentation of the condition (a timestep)." + _BY_VERSION
    )
    start_point: StartPoint | None = Field(
        None, description="noise, or cond: start from the diffused condition latent." + _BY_VERSION
    )
    rescale_cfg: bool | None = Field(
        None, description="Ramp the CFG scale up as the noise falls (v2.1)." + _BY_VERSION
    )
    # the guidance schedule `fidelity` runs with (upstream --g_*)
    guidance_space: GuidanceSpace = Field("latent", description="Compare latents, or decoded images (rgb).")
    guidance_loss: GuidanceLoss = Field("mse", description="mse, or w_mse (edge-weighted; needs rgb).")
    guidance_start: int = Field(
        1001, ge=-1, le=1001, description="Guide at timesteps t with stop < t+1 < start."
    )
    guidance_stop: int = Field(-1, ge=-1, le=1001, description="See guidance_start.")
    guidance_repeat: int = Field(1, ge=1, le=10, description="Guidance gradient steps per sampler step.")
    # sampler hyper-parameters (only for a sampler that reads them; see GET /v1/models)
    s_churn: float | None = Field(
        None, ge=0.0, le=100.0, description="Churn (edm_euler, edm_heun, edm_dpm_2)."
    )
    s_tmin: float | None = Field(None, ge=0.0, le=1e4, description="Lowest sigma churned.")
    s_tmax: float | None = Field(None, ge=0.0, le=1e4, description="Highest sigma churned.")
    s_noise: float | None = Field(None, ge=0.0, le=2.0, description="Noise scale of churn / ancestral steps.")
    eta: float | None = Field(None, ge=0.0, le=2.0, description="Ancestral / SDE noise (edm_*_a, edm_*_sde).")
    order: int | None = Field(None, ge=1, le=4, description="Linear multistep order (edm_lms).")
    # tile windows, px (unset: automatic, from the worker's memory budget)
    stage1_tile: int | None = Field(None, ge=64, le=MAX_TILE, description="Stage-1 tile (multiple of 64).")
    stage1_stride: int | None = Field(None, ge=8, le=MAX_TILE, description="Stage-1 tile stride.")
    vae_encode_tile: int | None = Field(None, ge=16, le=MAX_TILE, description="VAE encoder tile.")
    vae_decode_tile: int | None = Field(None, ge=16, le=MAX_TILE, description="VAE decoder tile.")
    latent_tile: int | None = Field(None, ge=16, le=MAX_TILE, description="Diffusion (UNet) tile.")
    latent_stride: int | None = Field(None, ge=8, le=MAX_TILE, description="Diffusion tile stride.")

    webhook_events_filter: list[WebhookEvent] = Field(
        default_factory=lambda: ["completed"],
        min_length=1,
        max_length=len(WEBHOOK_EVENTS),
        description="Which webhooks callback_url receives: 'start' (the job began running) and/or "
        "'completed' (it ended: succeeded, failed or canceled). In a form: comma-separated.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> RestoreParams:
        """The rules that span fields, as model/options.py `RestoreOptions.validate` checks them."""
        if self.guidance_loss == "w_mse" and self.guidance_space != "rgb":
            raise ValueError("guidance_loss 'w_mse' needs guidance_space 'rgb' (per-pixel weights)")
        if self.guidance_stop >= self.guidance_start - 1:
            raise ValueError("the guidance window stop < t+1 < start is empty")
        given = [name for name in HPARAMS if getattr(self, name) is not None]
        if given and self.sampler is None:
            raise ValueError(f"{', '.join(given)}: name the sampler whose hyper-parameters these are")
        if given and self.sampler is not None:
            unread = [name for name in given if name not in SAMPLER_HPARAMS[self.sampler]]
            if unread:
                reads = ", ".join(SAMPLER_HPARAMS[self.sampler]) or "none"
                raise ValueError(
                    f"sampler {self.sampler!r} does not read {', '.join(unread)} (it reads: {reads})"
                )
        tmin = 0.0 if self.s_tmin is None else self.s_tmin
        tmax = 300.0 if self.s_tmax is None else self.s_tmax  # upstream's defaults
        if (self.s_tmin is not None or self.s_tmax is not None) and tmax < tmin:
            raise ValueError(f"s_tmax ({tmax:g}) must be >= s_tmin ({tmin:g})")
        for name, multiple in TILE_MULTIPLES.items():
            value = getattr(self, name)
            if value is not None and value % multiple:
                raise ValueError(f"{name} must be a multiple of {multiple} px, got {value}")
        for stride, tile in TILE_STRIDES.items():
            s, t = getattr(self, stride), getattr(self, tile)
            if s is not None and (t is None or s > t):
                raise ValueError(f"{stride} needs {tile}, and must not exceed it")
        return self

    @field_validator("webhook_events_filter", mode="before")
    @classmethod
    def _split_events(cls, value: object) -> object:
        # A form field carries one string: "start,completed".
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("webhook_events_filter")
    @classmethod
    def _distinct_events(cls, value: list[str]) -> list[str]:
        return sorted(set(value), key=WEBHOOK_EVENTS.index)

    @field_validator("callback_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        # Full SSRF checks (resolved addresses, allow-list) live in common.webhooks at submit time;
        # here we only refuse what can never be a webhook target.
        if value is None or value == "":
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("callback_url must be an http(s) URL")
        return value

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.output_format]

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of the result (``model.inputs.output_size``)."""
        return max(1, round(width * self.upscale)), max(1, round(height * self.upscale))

    def output_pixels(self, width: int, height: int) -> int:
        out_w, out_h = self.output_size(width, height)
        return out_w * out_h

    def model_options(self) -> dict[str, object]:
        """Keyword arguments for ``model.options.RestoreOptions`` (kept here so both sides agree)."""
        return self.model_dump(exclude={"output_format", "callback_url", "webhook_events_filter"})
