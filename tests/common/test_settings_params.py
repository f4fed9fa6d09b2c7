from __future__ import annotations

import pytest
from pydantic import ValidationError

from common.params import VERSION_DEFAULTED, RestoreParams
from common.settings import Settings


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFFBIR_API_KEYS", '["secret-one", "secret-two"]')
    monkeypatch.setenv("DIFFBIR_MAX_QUEUE_DEPTH", "7")
    monkeypatch.setenv("DIFFBIR_STORAGE_BACKEND", "s3")
    settings = Settings()
    assert settings.auth_enabled and settings.max_queue_depth == 7 and settings.storage_backend == "s3"
    assert [k.get_secret_value() for k in settings.api_keys] == ["secret-one", "secret-two"]
    assert "secret-one" not in repr(settings) and "secret-one" not in str(settings.model_dump())


def test_settings_reject_bad_values() -> None:
    with pytest.raises(ValidationError):
        Settings(storage_backend="ftp")


def test_worker_only_settings_are_not_the_apis() -> None:
    """The model, batching and time-limit knobs belong to worker.config.WorkerSettings."""
    for name in ("worker_preset", "weights_dir", "batch_max_size", "task_hard_time_limit_s"):
        assert name not in Settings.model_fields


def test_params_defaults_and_model_options() -> None:
    params = RestoreParams()
    assert (params.task, params.upscale, params.fidelity) == ("sr", 4.0, 0.5)
    # The weights version's defaults are the worker's to fill in (docs/api.md, "version" fields).
    assert all(getattr(params, name) is None for name in VERSION_DEFAULTED)
    assert params.content_type == "image/png"
    options = params.model_options()
    assert "output_format" not in options and "callback_url" not in options and options["cfg_scale"] is None


@pytest.mark.parametrize(
    "bad",
    [
        {"fidelity": 1.5},
        {"upscale": 0.5},
        {"upscale": 9},
        {"steps": 0},
        {"steps": 101},
        {"seed": -1},
        {"seed": 2**32},
        {"sampler": "euler"},
        {"task": "colorize"},
        {"output_format": "gif"},
        {"prompt": "x" * 501},
        {"callback_url": "ftp://example.com/x"},
        {"unknown": 1},
    ],
)
def test_params_bounds(bad: dict) -> None:
    with pytest.raises(ValidationError):
        RestoreParams.model_validate(bad)


def test_params_from_form_strings() -> None:
    params = RestoreParams.model_validate({"upscale": "2", "seed": "4294967295", "steps": "10"})
    assert (params.upscale, params.seed, params.steps) == (2.0, 2**32 - 1, 10)
    assert params.output_pixels(10, 5) == 20 * 10
