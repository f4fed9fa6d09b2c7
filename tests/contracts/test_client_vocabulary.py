"""The standalone client's copy of the request vocabulary (client/vocabulary.py) matches the API's
(common/params.py): every field, its type and its choices. The client cannot import ``common``."""

from __future__ import annotations

import types
from typing import Literal, Union, get_args, get_origin

from client import vocabulary
from client.cli import build_parser
from common import params
from common.params import RestoreParams


def _kinds(name: str) -> tuple[type, tuple[str, ...] | None]:
    """(python type, Literal choices or None) of a request field, `X | None` unwrapped."""
    annotation = RestoreParams.model_fields[name].annotation
    union = get_origin(annotation) in (types.UnionType, Union)
    args = [a for a in (get_args(annotation) if union else (annotation,)) if a is not type(None)]
    (arg,) = args
    if get_origin(arg) is Literal:
        return str, get_args(arg)
    if get_origin(arg) is list:  # sent comma-separated, checked by the API
        return str, None
    return arg, None


def test_every_request_field_is_a_client_field_with_its_type_and_choices() -> None:
    assert [f.name for f in vocabulary.FIELDS] == list(RestoreParams.model_fields)
    for spec in vocabulary.FIELDS:
        kind, choices = _kinds(spec.name)
        assert spec.type is kind, spec.name
        assert spec.choices == choices, spec.name


def test_named_vocabularies_agree() -> None:
    assert vocabulary.TASKS == params.TASKS
    assert vocabulary.SAMPLERS == params.SAMPLERS
    assert vocabulary.COLOR_FIXES == params.COLOR_FIXES
    assert vocabulary.START_POINTS == params.START_POINTS
    assert vocabulary.GUIDANCE_SPACES == params.GUIDANCE_SPACES
    assert vocabulary.GUIDANCE_LOSSES == params.GUIDANCE_LOSSES


def test_restore_client_offers_every_sampler_and_knob() -> None:
    parser = build_parser()
    args = parser.parse_args(
        ["in.png", "-o", "out.png", "--sampler", "edm_dpm++_3m_sde", "--eta", "0.5", "--rescale-cfg"]
    )
    assert (args.sampler, args.eta, args.rescale_cfg) == ("edm_dpm++_3m_sde", 0.5, True)
    assert parser.parse_args(["in.png", "-o", "o.png", "--no-rescale-cfg"]).rescale_cfg is False
    assert parser.parse_args(["in.png", "-o", "o.png"]).rescale_cfg is None
    flags = {a.dest for a in parser._actions}
    assert {f.name for f in vocabulary.FIELDS} <= flags
