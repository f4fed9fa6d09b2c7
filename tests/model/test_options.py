"""model/options.py and model/presets.py: each vocabulary comes from the registry that implements it, the
bounds hold at their edges, and the official presets cover every version and task."""

from __future__ import annotations

import secrets

import pytest
import torch

from model import weights
from model.colorfix import apply_color_fix
from model.errors import InvalidInputError
from model.options import (
    COLOR_FIXES,
    MAX_CFG_SCALE,
    MAX_SEED,
    MAX_STEPS,
    SAMPLERS,
    TASKS,
    VERSIONS,
    RestoreOptions,
    random_seed,
)
from model.presets import OFFICIAL_SAMPLING, STAGE1_KINDS, STAGE2_SETTINGS, default_options
from model.sampling import SAMPLERS as SAMPLER_SPECS
from model.sampling import make_sampler
from model.schedule import make_diffusion


def test_sampler_names_are_the_registry() -> None:
    assert tuple(SAMPLER_SPECS) == SAMPLERS
    for name in SAMPLERS:
        sampler = make_sampler(name, make_diffusion())
        sampler.set_timesteps(4)
        assert sampler.num_steps == 4, name
        RestoreOptions(sampler=name).validate()


def test_every_color_fix_runs() -> None:
    content, style = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    for name in COLOR_FIXES:
        assert apply_color_fix(name, content, style).shape == content.shape
        RestoreOptions(color_fix=name).validate()
    with pytest.raises(InvalidInputError, match="color_fix"):
        apply_color_fix("lut", content, style)


def test_presets_cover_every_version_and_task() -> None:
    assert VERSIONS == weights.VERSIONS and TASKS == weights.TASKS
    for table in (OFFICIAL_SAMPLING, STAGE1_KINDS, STAGE2_SETTINGS):
        assert tuple(table) == VERSIONS
    for version in VERSIONS:
        assert tuple(sorted(STAGE1_KINDS[version])) == tuple(sorted(weights.NET_TASKS))
        for task in weights.version_tasks(version):
            default_options(version, task).validate()
            weights.required(version, task)  # every (version, task) has its files registered


def test_seed_range_is_32_bit_and_random_seeds_span_it(monkeypatch: pytest.MonkeyPatch) -> None:
    assert MAX_SEED == 2**32 - 1
    RestoreOptions(seed=0).validate()
    RestoreOptions(seed=MAX_SEED).validate()
    for bad in (-1, MAX_SEED + 1, 1.5):
        with pytest.raises(InvalidInputError, match=str(MAX_SEED)):
            RestoreOptions(seed=bad).validate()  # type: ignore[arg-type]
    bounds: list[int] = []
    monkeypatch.setattr(secrets, "randbelow", lambda n: bounds.append(n) or n - 1)
    assert random_seed() == MAX_SEED and bounds == [MAX_SEED + 1]


@pytest.mark.parametrize(
    "field, good, bad",
    [("steps", MAX_STEPS, MAX_STEPS + 1), ("cfg_scale", MAX_CFG_SCALE, MAX_CFG_SCALE + 0.5), ("steps", 1, 0)],
)
def test_bounds_hold_at_their_edges(field: str, good: float, bad: float) -> None:
    RestoreOptions(**{field: good}).validate()
    with pytest.raises(InvalidInputError, match=field):
        RestoreOptions(**{field: bad}).validate()


def test_batch_key_ignores_only_the_seed() -> None:
    assert RestoreOptions(seed=1).batch_key() == RestoreOptions(seed=2).batch_key()
    assert RestoreOptions(seed=1, steps=3).batch_key() != RestoreOptions(seed=1).batch_key()
