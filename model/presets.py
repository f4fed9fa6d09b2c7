"""The official settings of each DiffBIR release (v1, v2, v2.1), as XPixelGroup/DiffBIR runs them.

Sampling defaults (sampler, steps, cfg, prompts), the stage-1 net of each task and the fixed stage-2 knobs,
with `default_options` to start a request from them. Sources: v1's own release `inference.py`; v2/v2.1 the
README commands and `inference.py` defaults (see docs/model.md, "Official settings per version").
"""

from __future__ import annotations

import dataclasses
from typing import Any

from model.errors import InvalidInputError
from model.options import (
    BOUNDS,
    COLOR_FIXES,
    GUIDANCE_LOSSES,
    GUIDANCE_SPACES,
    OFFICIAL_DEFAULT_NEGATIVE_PROMPT,
    SAMPLER_HPARAMS,
    SAMPLERS,
    START_POINTS,
    TASKS,
    VERSION_DEFAULTED,
    VERSIONS,
    RestoreOptions,
    Stage2Settings,
    random_seed,
)
from model.sampling.hparams import SamplerParams

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

# Official sampling defaults per version: v1's release inference.py, the v2 README commands, v2.1's
# inference.py (sampler `edm_dpm++_3m_sde`, 10 steps) with the README commands' cfg 8 (argparse says 6).
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
        "sampler": "edm_dpm++_3m_sde",
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


def version_defaults(version: str) -> dict[str, Any]:
    """The official value of every `VERSION_DEFAULTED` option for `version`: what a request leaves unset."""
    check_version(version)
    values = {**OFFICIAL_SAMPLING[version], **dataclasses.asdict(STAGE2_SETTINGS[version])}
    return {name: values[name] for name in VERSION_DEFAULTED}


def resolve_options(
    options: RestoreOptions, version: str, stage2: Stage2Settings | None = None
) -> RestoreOptions:
    """`options` as they run on `version`'s weights: unset version-dependent fields take its official
    values (`stage2`: other start-point / ControlNet defaults, e.g. a benchmark's), the chosen sampler's
    unset hyper-parameters upstream's defaults, and an unset seed a random one (so the caller can report
    the seed that was used). Idempotent."""
    defaults = version_defaults(version)
    if stage2 is not None:
        defaults.update(dataclasses.asdict(stage2))
    filled: dict[str, Any] = {k: v for k, v in defaults.items() if getattr(options, k) is None}
    if options.seed is None:
        filled["seed"] = random_seed()
    sampler = options.sampler or defaults["sampler"]
    upstream = SamplerParams()
    for name in SAMPLER_HPARAMS.get(sampler, ()):
        if getattr(options, name) is None:
            filled[name] = getattr(upstream, name)
    return dataclasses.replace(options, **filled) if filled else options


def capabilities(version: str, tasks: tuple[str, ...] = TASKS, preset: str = "full") -> dict[str, Any]:
    """What a worker with these weights offers, as JSON-ready data (the worker publishes it; the API's
    `GET /v1/models` serves it): version, loaded tasks, samplers with the hyper-parameters each reads, the
    defaults an unset field takes, and the model's bounds."""
    plain = {f.name: f.default for f in dataclasses.fields(RestoreOptions)}
    defaults = {k: v for k, v in plain.items() if k not in ("seed", *VERSION_DEFAULTED)}
    defaults.update(version_defaults(version))
    return {
        "version": version,
        "preset": preset,
        "tasks": list(tasks),
        "samplers": {name: list(SAMPLER_HPARAMS[name]) for name in SAMPLERS},
        "sampler_hparam_defaults": dataclasses.asdict(SamplerParams()),
        "defaults": defaults,
        "choices": {
            "color_fix": list(COLOR_FIXES),
            "start_point": list(START_POINTS),
            "guidance_space": list(GUIDANCE_SPACES),
            "guidance_loss": list(GUIDANCE_LOSSES),
        },
        "bounds": {name: list(bound) for name, bound in BOUNDS.items()},
    }


def default_options(version: str, task: str, **overrides: Any) -> RestoreOptions:
    """`RestoreOptions` with the official defaults of `version` (sampler, steps, cfg, prompts, stage 2) and
    the README's upscale (4 for sr, 2 for unaligned_face, 1 for face/denoise); `overrides` win. `fidelity`
    keeps this service's default: the official default is no guidance, i.e. fidelity 0."""
    check_version(version)
    check_task(task)
    values = {
        "task": task,
        "upscale": OFFICIAL_UPSCALE.get(task, 1.0),
        **version_defaults(version),
        **overrides,
    }
    return RestoreOptions(**values)
