"""``GET /v1/models``: what callers may ask for, so they need not hard-code it.

Per weights version that a worker has published (``common.capabilities``): its tasks, samplers (with the
hyper-parameters each reads) and the defaults an unset field takes there. Always: the API's own request
limits and choices, read from ``RestoreParams`` (the bounds the API enforces, which may be stricter than the
model's). With no worker published yet, one entry describes the static vocabulary, with the defaults that do
not depend on the weights.
"""

from __future__ import annotations

import logging
from typing import Any, get_args

import annotated_types
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from redis.exceptions import RedisError

from common import capabilities, params
from common.params import RestoreParams
from service import openapi_docs as docs
from service.auth import caller_of

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["discovery"])


class SamplerInfo(BaseModel):
    name: str
    hparams: list[str] = Field(description="the hyper-parameters (s_churn, eta, ...) this sampler reads")


class ModelInfo(BaseModel):
    version: str | None = Field(description="Weights version (v1, v2, v2.1); null: no worker has published")
    preset: str | None = None
    tasks: list[str]
    samplers: list[SamplerInfo]
    defaults: dict[str, Any] = Field(description="what an unset request field becomes on these weights")
    limits: dict[str, list[float]] = Field(description="inclusive [low, high] of each numeric field")


class ModelsResponse(BaseModel):
    source: str = Field(description="'workers': published by running workers; 'static': none has yet")
    models: list[ModelInfo]
    limits: dict[str, list[float]] = Field(description="inclusive [low, high] of each numeric field")
    choices: dict[str, list[str]]


def request_limits() -> dict[str, list[float]]:
    """[ge, le] of every bounded request field, read from the schema the API validates with."""
    limits = {}
    for name, info in RestoreParams.model_fields.items():
        low = next((m.ge for m in info.metadata if isinstance(m, annotated_types.Ge)), None)
        high = next((m.le for m in info.metadata if isinstance(m, annotated_types.Le)), None)
        if low is not None and high is not None:
            limits[name] = [low, high]
    return limits


def static_model() -> ModelInfo:
    """The vocabulary without a worker: version-dependent defaults stay null (the worker fills them)."""
    defaults = RestoreParams().model_options()  # the fields that reach the model, as an empty form gives them
    return ModelInfo(
        version=None,
        tasks=list(params.TASKS),
        samplers=[SamplerInfo(name=n, hparams=list(read)) for n, read in params.SAMPLER_HPARAMS.items()],
        defaults=defaults,
        limits=request_limits(),
    )


def _published(document: dict[str, Any]) -> ModelInfo:
    return ModelInfo(
        version=document.get("version"),
        preset=document.get("preset"),
        tasks=list(document.get("tasks", [])),
        samplers=[
            SamplerInfo(name=n, hparams=list(r)) for n, r in dict(document.get("samplers", {})).items()
        ],
        defaults=dict(document.get("defaults", {})),
        limits=request_limits(),  # the API's, which the request must pass whatever the model allows
    )


@router.get(
    "/models",
    summary="Weights versions, tasks, samplers, defaults and limits",
    operation_id="list_models",
    responses={**docs.UNAUTHORIZED},
)
async def list_models(request: Request) -> ModelsResponse:
    caller_of(request)  # the same key as every /v1 route
    try:
        documents = await capabilities.read_all(request.app.state.services.aredis)
    except RedisError as exc:  # the vocabulary is still worth serving
        log.warning("capability documents unavailable: %s", exc)
        documents = []
    models = [_published(doc) for doc in documents]
    return ModelsResponse(
        source="workers" if models else "static",
        models=models or [static_model()],
        limits=request_limits(),
        choices={
            "task": list(params.TASKS),
            "sampler": list(params.SAMPLERS),
            "color_fix": list(params.COLOR_FIXES),
            "start_point": list(params.START_POINTS),
            "guidance_space": list(params.GUIDANCE_SPACES),
            "guidance_loss": list(params.GUIDANCE_LOSSES),
            "output_format": list(get_args(params.OutputFormat)),
        },
    )
