"""Every upstream knob through the API: accepted and stored as sent (unset fields stay null for the worker to
fill from its weights version), clear 422s for bad values, and the discovery route `GET /v1/models`."""

from __future__ import annotations

import pytest
import redis
from fastapi.testclient import TestClient

from common import capabilities
from common.keys import CAPABILITIES_KEY
from common.params import SAMPLERS, VERSION_DEFAULTED
from tests.service.conftest import ClientFactory
from tests.service.test_api import submit

KNOBS = {
    "sampler": "edm_heun",
    "steps": "8",
    "strength": "0.8",
    "noise_aug": "100",
    "start_point": "cond",
    "rescale_cfg": "true",
    "guidance_space": "rgb",
    "guidance_loss": "w_mse",
    "guidance_start": "900",
    "guidance_stop": "100",
    "guidance_repeat": "2",
    "s_churn": "1.5",
    "s_tmin": "0.1",
    "s_tmax": "50",
    "s_noise": "1.003",
    "stage1_tile": "512",
    "stage1_stride": "256",
    "vae_encode_tile": "256",
    "vae_decode_tile": "256",
    "latent_tile": "512",
    "latent_stride": "256",
}


def test_every_knob_is_accepted_and_recorded(client: TestClient) -> None:
    resp = submit(client, **KNOBS)
    assert resp.status_code == 202, resp.text
    params = resp.json()["params"]
    assert params["sampler"] == "edm_heun" and params["rescale_cfg"] is True and params["s_churn"] == 1.5
    assert (
        params["start_point"] == "cond" and params["latent_stride"] == 256 and params["guidance_repeat"] == 2
    )
    assert params["eta"] is None and params["order"] is None  # not read by edm_heun, not sent


def test_unset_version_defaults_stay_null_for_the_worker(client: TestClient) -> None:
    params = submit(client).json()["params"]
    assert all(params[name] is None for name in VERSION_DEFAULTED)
    assert params["seed"] is None and params["fidelity"] == 0.5


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"strength": "3"}, "less than or equal to 2"),
        ({"noise_aug": "1000"}, "less than or equal to 999"),
        ({"start_point": "lq"}, "'noise' or 'cond'"),
        ({"guidance_loss": "w_mse"}, "needs guidance_space 'rgb'"),
        ({"sampler": "spaced", "s_churn": "1"}, "does not read s_churn"),
        ({"eta": "0.5"}, "name the sampler"),
        ({"sampler": "edm_lms", "order": "5"}, "less than or equal to 4"),
        ({"stage1_tile": "100"}, "multiple of 64"),
        ({"latent_stride": "256"}, "needs latent_tile"),
        ({"guidance_start": "10", "guidance_stop": "9"}, "window"),
        ({"rescale_cfg": "perhaps"}, "boolean"),
    ],
)
def test_bad_knobs_get_a_clear_422(client: TestClient, fields: dict[str, str], words: str) -> None:
    resp = submit(client, **fields)
    assert resp.status_code == 422, resp.text
    assert words in str(resp.json()["errors"]), resp.json()


def test_models_falls_back_to_the_static_vocabulary(client: TestClient, redis_client: redis.Redis) -> None:
    redis_client.delete(CAPABILITIES_KEY)
    body = client.get("/v1/models").json()
    assert body["source"] == "static" and len(body["models"]) == 1
    model = body["models"][0]
    assert model["version"] is None and [s["name"] for s in model["samplers"]] == list(SAMPLERS)
    assert {"name": "edm_lms", "hparams": ["order"]} in model["samplers"] and model["defaults"][
        "sampler"
    ] is None
    assert model["limits"] == body["limits"]
    assert body["limits"]["steps"] == [1, 100] and body["limits"]["strength"] == [0.0, 2.0]
    assert body["choices"]["start_point"] == ["noise", "cond"]


def test_models_lists_what_workers_published(client: TestClient, redis_client: redis.Redis) -> None:
    document = {
        "version": "v2.1",
        "preset": "tiny",
        "tasks": ["sr"],
        "samplers": {"edm_dpm++_3m_sde": ["eta", "s_noise"]},
        "defaults": {"sampler": "edm_dpm++_3m_sde", "steps": 10, "cfg_scale": 8.0},
    }
    try:
        capabilities.publish(redis_client, document)
        redis_client.hset(CAPABILITIES_KEY, "broken", "{not json")
        body = client.get("/v1/models").json()
    finally:
        redis_client.delete(CAPABILITIES_KEY)
    assert body["source"] == "workers"
    assert [m["version"] for m in body["models"]] == ["v2.1"]
    assert body["models"][0]["defaults"]["sampler"] == "edm_dpm++_3m_sde"


def test_models_needs_the_api_key(make_client: ClientFactory) -> None:
    client = make_client(api_keys=["k1"])
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", headers={"Authorization": "Bearer k1"}).status_code == 200
