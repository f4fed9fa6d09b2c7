"""The API's request schema (common/params.py) and the model's options (model/options.py) agree.

The API cannot import the model (it never loads torch), so it keeps its own copy of the vocabulary; this test
is what keeps the copy honest: a task, sampler or colour fix, a default or a bound changed on one side only
fails here, in CI, instead of as a job failing on a GPU worker.
"""

from __future__ import annotations

import dataclasses
from typing import Any, get_args

import annotated_types
import pytest

from common import params
from common.params import RestoreParams
from model import options
from model.options import BOUNDS, RestoreOptions

# Where the service is deliberately stricter than the model: one request must not hold a GPU for long
# (steps, cfg, output size). Each entry must lie inside the model's bound; a change on either side that breaks
# that, or an API bound that drifts from this table, fails.
SERVICE_POLICY: dict[str, tuple[float, float]] = {
    "steps": (1, 100),
    "cfg_scale": (1.0, 20.0),
    "upscale": (1.0, 8.0),
}
# Request fields that are service concerns and never reach the model.
SERVICE_ONLY = {"output_format", "callback_url", "webhook_events_filter"}


def api_bounds(name: str) -> tuple[Any, Any]:
    low = high = None
    for meta in RestoreParams.model_fields[name].metadata:
        if isinstance(meta, annotated_types.Ge):
            low = meta.ge
        elif isinstance(meta, annotated_types.Le):
            high = meta.le
    return low, high


def model_defaults() -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(RestoreOptions)}


def test_every_option_is_a_request_field_and_back() -> None:
    api = set(RestoreParams.model_fields) - SERVICE_ONLY
    assert api == set(model_defaults())
    # ...and what the worker hands the model is exactly those.
    assert set(RestoreParams().model_options()) == api


@pytest.mark.parametrize(
    ("api_vocab", "model_vocab"),
    [
        (params.TASKS, options.TASKS),
        (params.SAMPLERS, options.SAMPLERS),
        (params.COLOR_FIXES, options.COLOR_FIXES),
        (params.START_POINTS, options.START_POINTS),
        (params.GUIDANCE_SPACES, options.GUIDANCE_SPACES),
        (params.GUIDANCE_LOSSES, options.GUIDANCE_LOSSES),
        (params.HPARAMS, options.HPARAMS),
        (params.VERSION_DEFAULTED, options.VERSION_DEFAULTED),
    ],
    ids=[
        "tasks",
        "samplers",
        "color_fixes",
        "start_points",
        "guidance_spaces",
        "guidance_losses",
        "hparams",
        "by_version",
    ],
)
def test_vocabularies_agree(api_vocab: tuple[str, ...], model_vocab: tuple[str, ...]) -> None:
    assert sorted(api_vocab) == sorted(model_vocab)


def _literal(name: str) -> tuple[str, ...]:
    """The Literal choices of a request field, `X | None` unwrapped."""
    annotation = RestoreParams.model_fields[name].annotation
    for arg in get_args(annotation) or (annotation,):
        if get_args(arg) and all(isinstance(a, str) for a in get_args(arg)):
            return get_args(arg)
    return get_args(annotation)


@pytest.mark.parametrize(
    ("name", "vocab"),
    [
        ("task", params.TASKS),
        ("sampler", params.SAMPLERS),
        ("color_fix", params.COLOR_FIXES),
        ("start_point", params.START_POINTS),
        ("guidance_space", params.GUIDANCE_SPACES),
        ("guidance_loss", params.GUIDANCE_LOSSES),
    ],
)
def test_literal_fields_use_the_named_vocabularies(name: str, vocab: tuple[str, ...]) -> None:
    assert _literal(name) == vocab


def test_sampler_hyper_parameters_per_sampler_agree() -> None:
    assert params.SAMPLER_HPARAMS == options.SAMPLER_HPARAMS


def test_tile_rules_agree() -> None:
    assert params.TILE_MULTIPLES == options.TILE_MULTIPLES
    assert params.TILE_STRIDES == options.TILE_STRIDES


def test_integer_options_are_integer_fields() -> None:
    for name in BOUNDS:
        annotation = RestoreParams.model_fields[name].annotation
        kinds = set(get_args(annotation) or (annotation,)) - {type(None)}
        assert kinds == ({int} if name in options.INTEGER_OPTIONS else {float}), name


def test_version_defaulted_fields_are_unset_on_both_sides() -> None:
    for name in options.VERSION_DEFAULTED:
        assert RestoreParams.model_fields[name].default is None
        assert model_defaults()[name] is None


@pytest.mark.parametrize("name", sorted(BOUNDS))
def test_bounds_agree(name: str) -> None:
    model_low, model_high = BOUNDS[name]
    expected = SERVICE_POLICY.get(name, (model_low, model_high))
    assert model_low <= expected[0] <= expected[1] <= model_high, f"{name}: policy outside the model's bound"
    assert api_bounds(name) == pytest.approx(expected), f"{name}: API bound drifted from the model/policy"


def test_policy_names_are_bounded_options() -> None:
    assert set(SERVICE_POLICY) <= set(BOUNDS)


def test_seed_range_is_one_constant() -> None:
    assert params.MAX_SEED == options.MAX_SEED == BOUNDS["seed"][1]


@pytest.mark.parametrize("name", sorted(set(RestoreParams.model_fields) - SERVICE_ONLY))
def test_defaults_agree(name: str) -> None:
    assert RestoreParams.model_fields[name].default == model_defaults()[name]


def test_default_negative_prompt_is_the_models() -> None:
    assert params.DEFAULT_NEGATIVE_PROMPT == options.OFFICIAL_DEFAULT_NEGATIVE_PROMPT


@pytest.mark.parametrize(
    ("width", "height"), [(1, 60000), (60000, 1), (300, 200), (512, 512), (7, 7), (2000, 9)]
)
def test_stage2_size_is_the_planners(width: int, height: int) -> None:
    """The API's submit-time size check computes the stage-2 size as the worker's planner does."""
    from model.planning import FULL_MIN_SHORT_EDGE, Planner

    assert params.STAGE2_MIN_SHORT_EDGE == FULL_MIN_SHORT_EDGE
    h, w = Planner(min_short_edge=FULL_MIN_SHORT_EDGE).diffusion_size((height, width))
    assert params.stage2_size(width, height) == (w, h)


def test_the_api_refuses_what_the_model_refuses() -> None:
    """Cross-field rules: the same combinations fail on both sides."""
    from pydantic import ValidationError

    from model.errors import InvalidInputError

    cases: list[dict[str, Any]] = [
        {"guidance_loss": "w_mse"},
        {"sampler": "spaced", "s_churn": 1.0},
        {"eta": 0.5},
        {"sampler": "edm_heun", "s_tmin": 400.0},
        {"stage1_tile": 96},
        {"latent_stride": 64},
        {"guidance_start": 10, "guidance_stop": 9},
    ]
    for case in cases:
        with pytest.raises(ValidationError):
            RestoreParams(**case)
        with pytest.raises(InvalidInputError):
            RestoreOptions(**case).validate()
    fine = {"sampler": "edm_heun", "s_churn": 1.0, "s_tmin": 0.5, "stage1_tile": 512, "stage1_stride": 256}
    RestoreOptions(**RestoreParams(**fine).model_options()).validate()
