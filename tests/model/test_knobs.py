"""Every upstream knob per request: defaults that follow the weights version, validation with clear errors,
and each knob reaching the pipeline (progress totals from the sampler, requested tiles, the seam-free tiled
VAE, guidance with every sampler). Tiny preset, random weights, CPU."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from model import pipeline as pipeline_mod
from model.errors import InvalidInputError
from model.options import (
    BOUNDS,
    HPARAMS,
    INTEGER_OPTIONS,
    SAMPLER_HPARAMS,
    SAMPLERS,
    RestoreOptions,
    RestoreResult,
)
from model.pipeline import DiffBIRPipeline
from model.planning import TilePlan
from model.presets import (
    OFFICIAL_V21_NEGATIVE_PROMPT,
    OFFICIAL_V21_POSITIVE_PROMPT,
    capabilities,
    resolve_options,
    version_defaults,
)
from model.sampling import SamplerParams


@pytest.fixture(scope="module")
def pipe() -> DiffBIRPipeline:
    return DiffBIRPipeline.from_preset("tiny", version="v2.1", device="cpu", precision="fp32", tasks=["sr"])


def _image(h: int = 16, w: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---- defaults follow the weights ---------------------------------------------------------------------------


def test_unset_fields_take_the_v21_defaults_and_a_recorded_seed() -> None:
    resolved = resolve_options(RestoreOptions(), "v2.1")
    assert (resolved.sampler, resolved.steps, resolved.cfg_scale) == ("edm_dpm++_3m_sde", 10, 8.0)
    assert (resolved.prompt, resolved.negative_prompt) == (
        OFFICIAL_V21_POSITIVE_PROMPT,
        OFFICIAL_V21_NEGATIVE_PROMPT,
    )
    assert (resolved.strength, resolved.noise_aug, resolved.start_point, resolved.rescale_cfg) == (
        1.0,
        0,
        "noise",
        False,
    )
    # the SDE solver reads eta and s_noise: upstream's defaults are filled in and shown; the others stay unset
    assert (resolved.eta, resolved.s_noise, resolved.s_churn, resolved.order) == (1.0, 1.0, None, None)
    assert isinstance(resolved.seed, int)
    assert resolve_options(resolved, "v2.1") == resolved  # idempotent: the seed is kept
    v2 = resolve_options(RestoreOptions(), "v2")
    assert (v2.sampler, v2.steps, v2.cfg_scale, v2.prompt) == ("spaced", 50, 4.0, "")


def test_what_the_caller_sets_wins() -> None:
    given = RestoreOptions(sampler="edm_lms", steps=7, cfg_scale=2.0, order=3, seed=5, strength=0.5)
    resolved = resolve_options(given, "v2.1")
    assert (resolved.sampler, resolved.steps, resolved.cfg_scale, resolved.order) == ("edm_lms", 7, 2.0, 3)
    assert (resolved.seed, resolved.strength) == (5, 0.5)


def test_capabilities_document_lists_the_version_defaults() -> None:
    doc = capabilities("v2.1", ("sr",), "tiny")
    assert doc["version"] == "v2.1" and doc["tasks"] == ["sr"]
    assert list(doc["samplers"]) == list(SAMPLERS)
    assert doc["samplers"]["edm_heun"] == ["s_churn", "s_tmin", "s_tmax", "s_noise"]
    assert doc["defaults"]["sampler"] == "edm_dpm++_3m_sde" and doc["defaults"]["fidelity"] == 0.5
    assert set(version_defaults("v2.1")) <= set(doc["defaults"])
    assert doc["bounds"]["steps"] == [1, 1000]


# ---- validation --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(set(BOUNDS) - {"upscale", "fidelity", "seed", "s_tmin"}))
def test_every_bound_holds_at_its_edges(name: str) -> None:
    low, high = BOUNDS[name]
    base: dict[str, Any] = {}
    if name in HPARAMS:
        base["sampler"] = next(s for s, read in SAMPLER_HPARAMS.items() if name in read)
    if name == "stage1_stride":
        base["stage1_tile"] = 4096
    if name == "latent_stride":
        base["latent_tile"] = 4096
    if name == "guidance_stop":
        base["guidance_start"] = 1001
    if name == "guidance_start":
        base["guidance_stop"] = -1
    step = 1 if name in INTEGER_OPTIONS else 0.5
    edges = [low, high]
    if name == "guidance_start":
        edges = [low + 2, high]  # the window must hold at least one timestep
    if name == "guidance_stop":
        edges = [low, high - 2]
    for good in edges:
        RestoreOptions(**base, **{name: good}).validate()
    for bad in (low - step, high + step):
        with pytest.raises(InvalidInputError, match=name):
            RestoreOptions(**base, **{name: bad}).validate()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"guidance_loss": "w_mse"}, "guidance_space 'rgb'"),
        ({"sampler": "spaced", "s_churn": 1.0}, "does not read s_churn"),
        ({"s_noise": 1.0}, "name the sampler"),
        ({"sampler": "edm_heun", "s_tmin": 10.0, "s_tmax": 5.0}, "s_tmax"),
        ({"stage1_tile": 100}, "multiple of 64"),
        ({"latent_stride": 64}, "needs latent_tile"),
        ({"latent_tile": 64, "latent_stride": 128}, "must not exceed"),
        ({"guidance_start": 500, "guidance_stop": 499}, "window"),
        ({"start_point": "lq"}, "start_point"),
        ({"steps": True}, "steps"),
    ],
)
def test_bad_combinations_are_refused_with_a_clear_message(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        RestoreOptions(**kwargs).validate()


def test_sampler_params_take_what_is_given_and_upstream_defaults() -> None:
    options = RestoreOptions(sampler="edm_euler", s_churn=1.2)
    assert options.sampler_params() == SamplerParams(s_churn=1.2)


def test_model_cli_has_a_flag_for_every_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    from model import cli

    seen: list[RestoreOptions] = []

    class Recorder:
        def restore(
            self, image: np.ndarray, options: RestoreOptions, progress: object = None
        ) -> RestoreResult:
            seen.append(options)
            return RestoreResult(np.zeros((2, 2, 3), np.uint8), {}, None, 0, 4, options=options)

    monkeypatch.setattr(DiffBIRPipeline, "from_preset", classmethod(lambda cls, **kw: Recorder()))
    src = tmp_path / "in.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(src)
    flags = ["--sampler", "edm_heun", "--s-churn", "1.5", "--start-point", "cond", "--rescale-cfg"]
    flags += [
        "--guidance-space",
        "rgb",
        "--guidance-loss",
        "w_mse",
        "--latent-tile",
        "512",
        "--noise-aug",
        "9",
    ]
    argv = ["restore", str(src), "-o", str(tmp_path / "out.png"), "--version", "v2.1", *flags]
    assert cli.main(argv) == 0
    got = seen[-1]
    assert (got.sampler, got.s_churn, got.start_point, got.rescale_cfg) == ("edm_heun", 1.5, "cond", True)
    assert (got.guidance_space, got.guidance_loss, got.latent_tile, got.noise_aug) == ("rgb", "w_mse", 512, 9)
    assert got.cfg_scale == 8.0 and got.strength == 1.0  # unset: v2.1's
    dests = {a.dest for a in cli.build_parser()._subparsers._group_actions[0].choices["restore"]._actions}
    names = {f.name for f in dataclasses.fields(RestoreOptions)}
    assert names - {"cfg_scale"} <= dests and "cfg" in dests
    assert cli.main([*argv, "--s-tmin", "500"]) == cli.EXIT_USER_ERROR  # above s_tmax's default: one line


# ---- the pipeline runs the knobs ---------------------------------------------------------------------------


def test_progress_total_is_the_samplers_own_step_count(pipe: DiffBIRPipeline) -> None:
    """Upstream DDIM at 6 steps runs 7 (range(0, 1000, 166) + 1); progress and the result say 7."""
    events: list[tuple[str, int, int]] = []
    options = RestoreOptions(sampler="ddim", steps=6, seed=3, upscale=1.0, fidelity=0.0)
    result = pipe.restore(_image(), options, progress=lambda *e: events.append(e))
    sampler = [e for e in events if e[0] == "sampler"]
    assert sampler[0] == ("sampler", 0, 7) and sampler[-1] == ("sampler", 7, 7) and len(sampler) == 8
    assert result.sampler_steps == 7
    assert result.version == "v2.1" and result.options is not None
    assert result.options.seed == result.seed == 3 and result.options.cfg_scale == 8.0


def test_an_unset_seed_is_drawn_and_reported(pipe: DiffBIRPipeline) -> None:
    options = RestoreOptions(steps=1, upscale=1.0, fidelity=0.0)
    first = pipe.restore(_image(), options)
    assert first.options is not None and first.options.seed == first.seed
    again = pipe.restore(_image(), dataclasses.replace(options, seed=first.seed))
    np.testing.assert_array_equal(first.image, again.image)


def test_stage2_knobs_reach_the_sampler(pipe: DiffBIRPipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def spy(name: str, real: Any, pick: Any) -> None:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            seen[name] = pick(args, kwargs)
            return real(*args, **kwargs)

        monkeypatch.setattr(pipeline_mod, name, wrapper)

    spy("start_latent", pipeline_mod.start_latent, lambda a, k: a[2])
    spy("augment_condition", pipeline_mod.augment_condition, lambda a, k: a[2])
    spy("sample", pipeline_mod.sample, lambda a, k: (a[7], k["rescale_cfg"], a[1].params))
    knobs = {"strength": 0.5, "start_point": "cond", "noise_aug": 500, "rescale_cfg": True}
    options = RestoreOptions(sampler="edm_euler", steps=2, seed=1, upscale=1.0, fidelity=0.0, s_churn=1.5)
    base = pipe.restore(_image(), options).image
    assert seen["start_latent"] == "noise" and seen["augment_condition"] == 0
    assert seen["sample"] == (1.0, False, SamplerParams(s_churn=1.5))
    changed = pipe.restore(_image(), dataclasses.replace(options, **knobs)).image
    assert seen["start_latent"] == "cond" and seen["augment_condition"] == 500
    assert seen["sample"][:2] == (0.5, True)
    assert not np.array_equal(base, changed)


def test_requested_tiles_override_the_plan(pipe: DiffBIRPipeline) -> None:
    options = RestoreOptions(
        stage1_tile=64,
        stage1_stride=48,
        vae_encode_tile=32,
        vae_decode_tile=32,
        latent_tile=64,
        latent_stride=32,
    )
    plan = pipe.plan((16, 16), (64, 64), "sr", 1, True, options)
    assert (plan.stage1_tile, plan.stage1_stride, plan.vae_encode, plan.vae_decode) == (64, 48, 32, 4)
    assert plan.latent is not None and (plan.latent.tile, plan.latent.stride) == (8, 4)
    # Caller-sized windows: one per forward, and VAE tiles wait off the device (the plan sized neither).
    assert plan.stage1_batch == 1 and plan.vae_keep_bytes == 0
    assert pipe.plan((16, 16), (64, 64), "sr", 1, True, RestoreOptions()) == TilePlan()


def test_tiled_vae_stages_use_shared_groupnorm_tiles(
    pipe: DiffBIRPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    for name in ("posterior_tiled_gn", "encode_tiled_gn", "decode_tiled_gn"):
        real = getattr(pipeline_mod, name)
        monkeypatch.setattr(
            pipeline_mod, name, lambda *a, _n=name, _r=real, **k: calls.append(_n) or _r(*a, **k)
        )
    options = RestoreOptions(steps=1, seed=0, upscale=1.0, vae_encode_tile=16, vae_decode_tile=16)
    result = pipe.restore(_image(96, 96), options)
    assert result.image.shape == (96, 96, 3)
    assert calls == ["posterior_tiled_gn", "decode_tiled_gn"]
    calls.clear()
    pipe.restore(_image(96, 96), dataclasses.replace(options, fidelity=0.0))
    assert calls == ["encode_tiled_gn", "decode_tiled_gn"]


@pytest.mark.parametrize("name", SAMPLERS)
def test_guidance_pulls_towards_the_condition_with_every_sampler(
    pipe: DiffBIRPipeline, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the pipeline's stage 2 (v-prediction, zero-SNR, CFG 8, the same seed): the sampled latent ends
    closer to the stage-1 latent with fidelity 1 than with guidance off. Measured on latents: the random
    VAE is no autoencoder, so decoded distances say nothing."""
    cond = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    runs: list[tuple[torch.Tensor, torch.Tensor]] = []
    real = pipeline_mod.sample

    def recording(*args: Any, **kwargs: Any) -> torch.Tensor:
        z = real(*args, **kwargs)
        runs.append((z, args[3].c_img))  # (z_0, the condition latent)
        return z

    monkeypatch.setattr(pipeline_mod, "sample", recording)

    def distance(fidelity: float) -> float:
        options = RestoreOptions(sampler=name, steps=3, seed=0, fidelity=fidelity)
        pipe.stage2(cond, options, [torch.Generator().manual_seed(0)])
        z, c_img = runs[-1]
        return (z - c_img).pow(2).mean().item()

    free, guided = distance(0.0), distance(1.0)
    assert guided < 0.9 * free, (free, guided)
