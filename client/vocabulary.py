"""The request vocabulary as the client knows it: every restoration field with its type and choices.

The client stands alone (it is installed without the service), so it keeps its own copy of the API's
vocabulary; tests/contracts/test_client_vocabulary.py fails when it drifts from ``common.params``. The
``restore-client`` flags are generated from ``FIELDS``, so a new field is one line here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

TASKS = ("sr", "face", "denoise", "unaligned_face")
SAMPLERS = (
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
)
COLOR_FIXES = ("wavelet", "adain", "none")
START_POINTS = ("noise", "cond")
GUIDANCE_SPACES = ("latent", "rgb")
GUIDANCE_LOSSES = ("mse", "w_mse")
OUTPUT_FORMATS = ("png", "jpeg", "webp")
BY_VERSION = " (default: the server's weights version's)"


@dataclass(frozen=True)
class Field:
    name: str
    type: Callable[[str], object]  # str, int, float or bool
    help: str
    choices: tuple[str, ...] | None = None
    flag: str | None = None  # the restore-client flag when not the name with dashes


FIELDS: tuple[Field, ...] = (
    Field("task", str, "what to restore", TASKS),
    Field("upscale", float, "output size / input size"),
    Field("fidelity", float, "0 = most generative .. 1 = closest to the input"),
    Field("steps", int, "sampler steps" + BY_VERSION),
    Field("sampler", str, "sampler" + BY_VERSION, SAMPLERS),
    Field("seed", int, "fixed seed (default: drawn by the server and recorded in the job)"),
    Field("cfg_scale", float, "classifier-free guidance scale" + BY_VERSION),
    Field("color_fix", str, "colour correction against stage 1", COLOR_FIXES),
    Field("output_format", str, "default: from -o's suffix", OUTPUT_FORMATS),
    Field("prompt", str, "positive prompt" + BY_VERSION),
    Field("negative_prompt", str, "negative prompt" + BY_VERSION),
    Field("callback_url", str, "webhook notified when the job starts/finishes"),
    Field("strength", float, "ControlNet strength; lower = more creative" + BY_VERSION),
    Field("noise_aug", int, "noise augmentation of the condition (a timestep)" + BY_VERSION),
    Field("start_point", str, "start from noise or the diffused condition" + BY_VERSION, START_POINTS),
    Field("rescale_cfg", bool, "ramp the CFG scale up as the noise falls" + BY_VERSION),
    Field("guidance_space", str, "fidelity compares latents or decoded images", GUIDANCE_SPACES),
    Field("guidance_loss", str, "w_mse (edge-weighted) needs rgb", GUIDANCE_LOSSES),
    Field("guidance_start", int, "guide where stop < t+1 < start (timesteps)"),
    Field("guidance_stop", int, "see --guidance-start"),
    Field("guidance_repeat", int, "guidance gradient steps per sampler step"),
    Field("s_churn", float, "churn (edm_euler, edm_heun, edm_dpm_2)"),
    Field("s_tmin", float, "lowest sigma churned"),
    Field("s_tmax", float, "highest sigma churned"),
    Field("s_noise", float, "noise scale of churn / ancestral steps"),
    Field("eta", float, "ancestral / SDE noise (edm_*_a, edm_*_sde)"),
    Field("order", int, "linear multistep order (edm_lms)"),
    Field("stage1_tile", int, "stage-1 tile, px (multiple of 64; default: automatic)"),
    Field("stage1_stride", int, "stage-1 tile stride, px"),
    Field("vae_encode_tile", int, "VAE encoder tile, px (default: automatic)"),
    Field("vae_decode_tile", int, "VAE decoder tile, px (default: automatic)"),
    Field("latent_tile", int, "diffusion tile, px (default: automatic)"),
    Field("latent_stride", int, "diffusion tile stride, px"),
    Field(
        "webhook_events_filter",
        str,
        "comma-separated webhook events: start, completed (default: completed)",
        flag="webhook-events",
    ),
)
