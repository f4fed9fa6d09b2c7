"""Full-size stage-1 nets, built weightless on the meta device, have the official checkpoints' layout."""

from __future__ import annotations

import json

import pytest
import torch

from model.stage1 import build_stage1, count_parameters, stage1_from_state_dict
from tests.model.reference import MANIFEST_DIR, load_manifest

MANIFESTS = {"swinir": "swinir_general", "bsrnet": "bsrnet", "scunet": "scunet"}
PARAM_COUNT_KEYS = {"swinir": "SwinIR", "bsrnet": "RRDBNet", "scunet": "SCUNet"}


@pytest.mark.parametrize("kind", list(MANIFESTS))
def test_full_net_matches_manifest(kind: str) -> None:
    manifest = load_manifest(MANIFESTS[kind])
    with torch.device("meta"):
        net = build_stage1(kind, preset="full")
    sd = net.net.state_dict()
    assert all(t.is_meta for t in sd.values())
    assert list(sd) == list(manifest["keys"])  # same keys, same order
    shapes = {k: list(v.shape) for k, v in sd.items()}
    assert shapes == manifest["keys"]
    non_float32 = {k: str(v.dtype).removeprefix("torch.") for k, v in sd.items() if v.dtype != torch.float32}
    assert non_float32 == manifest["key_dtypes_non_float32"]
    assert len(sd) == manifest["num_tensors"]
    assert sum(v.numel() for v in sd.values()) == manifest["num_elements_all_tensors"]
    assert sum(p.numel() for p in net.net.parameters()) == manifest["params"]


def test_parameter_counts() -> None:
    counts = json.loads((MANIFEST_DIR / "param_counts.json").read_text())
    for kind, key in PARAM_COUNT_KEYS.items():
        assert count_parameters(kind) == counts[key], kind


def test_official_layout_loads_strictly_into_the_full_net() -> None:
    """A state dict with the manifest's keys, shapes and dtypes (like an official file) loads and runs."""
    manifest = load_manifest("swinir_general")
    dtypes = manifest["key_dtypes_non_float32"]
    sd = {
        k: torch.zeros(shape, dtype=getattr(torch, dtypes.get(k, "float32")))
        for k, shape in manifest["keys"].items()
    }
    net = stage1_from_state_dict("swinir", sd)
    assert not any(t.is_meta for t in net.state_dict().values())
    with torch.no_grad():
        out = net(torch.rand(1, 3, 40, 48))
    # all-zero weights: every conv gives 0, so the output is the mean SwinIR adds back
    mean = torch.tensor([0.4488, 0.4371, 0.4040]).view(1, 3, 1, 1)
    assert out.shape == (1, 3, 40, 48) and torch.allclose(out, mean.expand_as(out))
