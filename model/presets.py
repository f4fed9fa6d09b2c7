"""The official settings of each DiffBIR release (v1, v2, v2.1), as XPixelGroup/DiffBIR runs them.

Sampling defaults (sampler, steps, cfg, prompts), the stage-1 net of each task and the fixed stage-2 knobs,
with `default_options` to start a request from them. Sources: v1's own release `inference.py`; v2/v2.1 the
README commands and `inference.py` defaults (see docs/model.md, "Official settings per version").
"""

from __future__ import annotations

from typing import Any

from model.errors import InvalidInputError
from model.options import OFFICIAL_DEFAULT_NEGATIVE_PROMPT, TASKS, VERSIONS, RestoreOptions, Stage2Settings

# v2.1's `inference.py` defaults (its captioner, which prepends an image caption to the positive prompt, is
# not part of this service).
OFFICIAL_V21_POSITIVE_PROMPT = (
    "Cinematic, High Contrast, highly detailed, taken using a Canon EOS R camera, "
    "hyper detailed photo - realistic maximum detail, 32k, Color Grading, ultra HD, "
    "extreme meticulous detailing, "
    "skin pore detailing, hyper sharpness, perfect without deformations."
)
OFFICIAL_V21_NEGATIVE_PROMPT = (
    "painting, oil painting, illustration, drawing, art, sketch, oil painting, cartoon, "
    "CG Style, 3D render, unreal engine, blurring, dirty, messy, worst quality, low quality, "
    "frames, watermark, "
    "signature, jpeg artifacts, deformed, lowres, over-smooth."
)

STAGE2_SETTINGS: dict[str, Stage2Settings] = {
    "v1": Stage2Settings(),
    "v2": Stage2Settings(),
    "v2.1": Stage2Settings(),
}

# Official sampling defaults per version. v2.1's `edm_dpm++_3m_sde` sampler is not offered here; "dpmpp"
# (DPM-Solver++) is the closest, at the same 10 steps.
OFFICIAL_SAMPLING: dict[str, dict[str, Any]] = {
    "v1": {
        "sampler": "spaced",
        "steps": 50,
        "cfg_scale": 1.0,  # the v1 release sampled without CFG (cfg_scale=1.0, empty prompts)
        "prompt": "",
        "negative_prompt": OFFICIAL_DEFAULT_NEGATIVE_PROMPT,
    },
    "v2": {
        "sampler": "spaced",
        "steps": 50,
        "cfg_scale": 4.0,
        "prompt": "",
        "negative_prompt": OFFICIAL_DEFAULT_NEGATIVE_PROMPT,
    },
    "v2.1": {
        "sampler": "dpmpp",
        "steps": 10,
        "cfg_scale": 8.0,
        "prompt": OFFICIAL_V21_POSITIVE_PROMPT,
        "negative_prompt": OFFICIAL_V21_NEGATIVE_PROMPT,
    },
}

# Stage-1 net kind per version and task (reference README, "Which stage-1 model goes with which version").
STAGE1_KINDS: dict[str, dict[str, str]] = {
    "v1": {"sr": "swinir", "denoise": "swinir", "face": "swinir"},
    "v2": {"sr": "bsrnet", "denoise": "scunet", "face": "swinir"},
    "v2.1": {"sr": "swinir", "denoise": "swinir", "face": "swinir"},
}


# The README commands' --upscale per task (1 for the others).
OFFICIAL_UPSCALE: dict[str, float] = {"sr": 4.0, "unaligned_face": 2.0}


def check_version(version: str) -> str:
    if version not in VERSIONS:
        raise InvalidInputError(f"unknown version {version!r}; expected one of {list(VERSIONS)}")
    return version


def check_task(task: str) -> str:
    if task not in TASKS:
        raise InvalidInputError(f"unknown task {task!r}; expected one of {TASKS}")
    return task


def default_options(version: str, task: str, **overrides: Any) -> RestoreOptions:
    """`RestoreOptions` with the official sampling defaults of `version` (sampler, steps, cfg, prompts) and
    the README's upscale (4 for sr, 2 for unaligned_face, 1 for face/denoise); `overrides` win. `fidelity`
    keeps this service's default: the official default is no guidance, i.e. fidelity 0."""
    check_version(version)
    check_task(task)
    values = {
        "task": task,
        "upscale": OFFICIAL_UPSCALE.get(task, 1.0),
        **OFFICIAL_SAMPLING[version],
        **overrides,
    }
    return RestoreOptions(**values)
