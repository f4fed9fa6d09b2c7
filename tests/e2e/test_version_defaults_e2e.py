"""Defaults follow the weights, end to end: a real v2.1 worker (tiny preset labelled v2.1) and the real API.

A request that leaves the sampler, steps, CFG, prompts and seed unset runs with v2.1's official values; the
job document shows what ran (``resolved``: the values and the seed used) and on which weights
(``model_version``), and ``GET /v1/models`` lists the version's defaults the worker published."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import RedisServer
from tests.e2e.conftest import Stack, _base_env
from tests.worker.conftest import png_bytes

V21_DEFAULTS = {"sampler": "edm_dpm++_3m_sde", "steps": 10, "cfg_scale": 8.0}


@pytest.fixture(scope="module")
def v21_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Its own Redis (a second worker on the shared one would take the other stacks' jobs)."""
    server = RedisServer(tmp_path_factory.mktemp("v21-redis"))
    server.start()
    env = dict(_base_env(server.url), DIFFBIR_WORKER_VERSION="v2.1")
    stack = Stack("redis", server, env, tmp_path_factory.mktemp("e2e-v21"))
    try:
        stack.start_worker()
        stack.start_api()
        yield stack
    finally:
        stack.close()
        server.stop()


def test_a_v21_worker_fills_unset_fields_with_v21_defaults(v21_stack: Stack) -> None:
    resp = v21_stack.http.post(
        "/v1/restore",
        files={"image": ("in.png", png_bytes(32, 32, (120, 80, 40)), "image/png")},
        data={"upscale": "2", "fidelity": "0"},
        headers=v21_stack.headers(),
    )
    assert resp.status_code == 202, resp.text
    sent = resp.json()["params"]
    assert all(sent[name] is None for name in ("sampler", "steps", "cfg_scale", "prompt", "seed"))
    doc = v21_stack.wait_status(resp.json()["id"], timeout_s=240)
    assert doc["status"] == "succeeded", doc
    assert doc["model_version"] == "v2.1"
    ran = doc["resolved"]
    assert {k: ran[k] for k in V21_DEFAULTS} == V21_DEFAULTS
    assert ran["prompt"].startswith("Cinematic") and ran["negative_prompt"].startswith("painting")
    assert (ran["strength"], ran["start_point"], ran["rescale_cfg"], ran["eta"]) == (1.0, "noise", False, 1.0)
    assert isinstance(ran["seed"], int) and doc["params"]["seed"] is None  # the drawn seed is recorded

    models = v21_stack.http.get("/v1/models", headers=v21_stack.headers()).json()
    assert models["source"] == "workers"
    (model,) = models["models"]
    assert model["version"] == "v2.1" and model["preset"] == "tiny"
    assert {k: model["defaults"][k] for k in V21_DEFAULTS} == V21_DEFAULTS
    assert {"name": "edm_dpm++_3m_sde", "hparams": ["eta", "s_noise"]} in model["samplers"]


def test_the_recorded_seed_reproduces_the_result(v21_stack: Stack) -> None:
    image = png_bytes(32, 32, (10, 200, 90))
    fields = {"upscale": "2", "steps": "2"}
    first = v21_stack.wait_status(v21_stack.submit_ok(image, **fields))
    seed = first["resolved"]["seed"]
    again = v21_stack.wait_status(v21_stack.submit_ok(image, **fields, seed=seed))
    results = [
        v21_stack.http.get(f"/v1/jobs/{doc['id']}/result", headers=v21_stack.headers()).content
        for doc in (first, again)
    ]
    assert again["resolved"]["seed"] == seed and results[0] == results[1]
