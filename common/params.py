"""Public restoration parameters (``RestoreParams``): validated once at the API, stored in the job document.

The worker maps them onto the model's ``RestoreOptions`` (same names; ``output_format``, ``callback_url`` and
``webhook_events_filter`` are service concerns and do not reach the model). Bounds keep one request from
monopolising a GPU (``steps``) or the text encoder (prompt lengths).
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

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
OutputFormat = ImageFormat
# Webhook events a job may ask for (Replicate's names; common.webhook_outbox sends them).
WebhookEvent = Literal["start", "completed"]
WEBHOOK_EVENTS: tuple[str, ...] = get_args(WebhookEvent)
TASKS: tuple[str, ...] = get_args(Task)
SAMPLERS: tuple[str, ...] = get_args(Sampler)
COLOR_FIXES: tuple[str, ...] = get_args(ColorFix)
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


class RestoreParams(BaseModel):
    """What the client may choose; every field has a default so an image alone is a valid request."""

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
    steps: int = Field(50, ge=1, le=100, description="Sampler steps.")
    sampler: Sampler = "spaced"
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Fixed seed for reproducible output.")
    cfg_scale: float = Field(4.0, ge=1.0, le=20.0, description="Classifier-free guidance scale.")
    color_fix: ColorFix = "wavelet"
    output_format: OutputFormat = "png"
    prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field(DEFAULT_NEGATIVE_PROMPT, max_length=MAX_PROMPT_CHARS)
    callback_url: str | None = Field(
        None, max_length=2048, description="http(s) URL notified (signed) when the job finishes."
    )

    webhook_events_filter: list[WebhookEvent] = Field(
        default_factory=lambda: ["completed"],
        min_length=1,
        max_length=len(WEBHOOK_EVENTS),
        description="Which webhooks callback_url receives: 'start' (the job began running) and/or "
        "'completed' (it ended: succeeded, failed or canceled). In a form: comma-separated.",
    )

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
