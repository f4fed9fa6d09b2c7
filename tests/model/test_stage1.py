"""Stage-1 nets against the reference's golden outputs (random weights, official key layouts)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from spandrel import ModelLoader
from spandrel.architectures.SCUNet import SCUNet

from model.checkpoints import load_strict
from model.errors import CheckpointMismatchError, InvalidInputError
from model.stage1 import (
    STAGE1_CONFIGS,
    RRDBNet,
    Stage1Net,
    build_stage1,
    load_stage1,
    stage1_from_state_dict,
)
from tests.model.reference import assert_forward_close, load_fixture, tiny_configs

WEIGHTS = {"swinir": "weights_swinir", "bsrnet": "weights_bsrnet", "scunet": "weights_scunet"}


@pytest.fixture(scope="module")
def nets() -> dict[str, Stage1Net]:
    return {k: stage1_from_state_dict(k, load_fixture(w)[0], preset="tiny") for k, w in WEIGHTS.items()}


@pytest.mark.parametrize("case", ["direct0", "direct1", "padded"])
def test_swinir_fixture(nets: dict[str, Stage1Net], case: str) -> None:
    t, _ = load_fixture("swinir")
    with torch.no_grad():
        out = nets["swinir"](t[f"{case}.input"])
    assert_forward_close(out, t[f"{case}.output"], f"swinir {case}")


def test_swinir_padding_is_zeros_bottom_right(nets: dict[str, Stage1Net]) -> None:
    """The raw net on the fixture's own padded input, cropped, gives the wrapper's result."""
    t, _ = load_fixture("swinir")
    with torch.no_grad():
        raw = nets["swinir"].net(t["padded.input_padded"])[..., :40, :48]
    assert_forward_close(raw, t["padded.output"], "swinir raw padded")


def test_bsrnet_fixture(nets: dict[str, Stage1Net]) -> None:
    t, _ = load_fixture("bsrnet")
    with torch.no_grad():
        out = nets["bsrnet"](t["input"])
    assert nets["bsrnet"].scale == 4
    assert_forward_close(out, t["output"], "bsrnet")


@pytest.mark.parametrize("suffix", ["", "_odd"])
def test_scunet_fixture(nets: dict[str, Stage1Net], suffix: str) -> None:
    t, _ = load_fixture("scunet")
    with torch.no_grad():
        out = nets["scunet"](t[f"input{suffix}"])
    assert_forward_close(out, t[f"output{suffix}"], f"scunet{suffix}")


def test_plain_spandrel_scunet_would_pad_wrongly() -> None:
    """Why DiffBIRSCUNet exists: spandrel reflects where the original SCUNet replicates."""
    w, _ = load_fixture("weights_scunet")
    t, _ = load_fixture("scunet")
    plain = SCUNet(config=[0, 1, 2, 0, 0, 1, 0], dim=32).eval()
    plain.load_state_dict(w)
    with torch.no_grad():
        err = (plain(t["input_odd"]) - t["output_odd"]).abs().max().item()
    assert err > 1e-2


def test_tiled_swinir_fixture(nets: dict[str, Stage1Net]) -> None:
    t, meta = load_fixture("utils")
    cfg = meta["tiled_swinir"]
    with torch.no_grad():
        out = nets["swinir"].forward_tiled(t["tiled_swinir.input"], cfg["size"], cfg["stride"])
    assert_forward_close(out, t["tiled_swinir.output"], "tiled swinir")


def test_swinir_tile_must_be_multiple_of_64(nets: dict[str, Stage1Net]) -> None:
    with pytest.raises(InvalidInputError, match="multiple of 64"):
        nets["swinir"].forward_tiled(torch.rand(1, 3, 64, 64), 48, 32)


def test_bsrnet_matches_spandrel_for_its_config() -> None:
    """Our RRDBNet (needed for gc != 32 and BSRNet's key names) equals spandrel's ESRGAN where both apply."""
    torch.manual_seed(0)
    ours = RRDBNet(nf=16, nb=1, gc=32, sf=4).eval()
    theirs = ModelLoader().load_from_state_dict(ours.state_dict()).model.eval()
    x = torch.rand(1, 3, 12, 10)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))


def test_load_from_file_with_lightning_wrapper(tmp_path: Path) -> None:
    w, _ = load_fixture("weights_bsrnet")
    torch.save({"state_dict": {f"module.{k}": v for k, v in w.items()}}, tmp_path / "BSRNet.ckpt")
    net = load_stage1("bsrnet", tmp_path / "BSRNet.ckpt", preset="tiny")
    t, _ = load_fixture("bsrnet")
    with torch.no_grad():
        assert_forward_close(net(t["input"]), t["output"], "bsrnet from file")


def test_strict_loading_names_the_problem() -> None:
    w, _ = load_fixture("weights_swinir")
    broken = dict(w)
    broken.pop("conv_last.bias")
    broken["conv_first.weight"] = broken.pop("conv_first.1.weight")  # spandrel's layout, not the official one
    with pytest.raises(CheckpointMismatchError) as info:
        stage1_from_state_dict("swinir", broken, preset="tiny")
    assert set(info.value.missing) == {"conv_last.bias", "conv_first.1.weight"}
    assert info.value.unexpected == ["conv_first.weight"]
    wider = {**STAGE1_CONFIGS["tiny"]["swinir"], "embed_dim": 32}
    with pytest.raises(CheckpointMismatchError) as info:  # weights of another config
        stage1_from_state_dict("swinir", w, wider)
    assert ("conv_first.1.weight", (24, 192, 3, 3), (32, 192, 3, 3)) in info.value.shape_mismatches


def test_configs_match_the_reference() -> None:
    assert STAGE1_CONFIGS["tiny"]["swinir"] == tiny_configs()["swinir_cfg"]
    for kind in ("bsrnet", "scunet"):
        meta_cfg = load_fixture(WEIGHTS[kind])[1]["config"]
        assert {k: STAGE1_CONFIGS["tiny"][kind][k] for k in meta_cfg} == meta_cfg


def test_random_init_build_and_shapes() -> None:
    net = build_stage1("scunet", preset="tiny")
    assert net.kind == "scunet" and net.scale == 1 and not net.training
    with torch.no_grad():
        assert net(torch.rand(2, 3, 40, 56)).shape == (2, 3, 40, 56)
    with pytest.raises(InvalidInputError):
        net(torch.rand(1, 1, 64, 64))
    with pytest.raises(InvalidInputError):
        build_stage1("hat")


CASE_INPUT = {
    "swinir": ("direct0.input", "direct0.output"),
    "bsrnet": ("input", "output"),
    "scunet": ("input", "output"),
}


@pytest.mark.parametrize(
    "kind,dtype",
    [
        ("swinir", torch.float16),
        ("swinir", torch.bfloat16),
        ("bsrnet", torch.bfloat16),
        ("scunet", torch.bfloat16),
    ],
)
def test_reduced_precision(kind: str, dtype: torch.dtype) -> None:
    """Half/bfloat16 nets take float32 images and give float32 back, close to the float32 result.

    SwinIR in half precision needs `_SwinBlock`'s mask in the block's dtype (spandrel's float32 mask fails).
    """
    t, _ = load_fixture(kind)
    net = stage1_from_state_dict(kind, load_fixture(WEIGHTS[kind])[0], preset="tiny").to(dtype)
    inp, ref = (t[k] for k in CASE_INPUT[kind])
    with torch.no_grad():
        out = net(inp)
    assert out.dtype == torch.float32
    assert (out - ref).abs().max().item() < 0.05 * (1 + ref.abs().max().item())


def test_output_keeps_input_dtype(nets: dict[str, Stage1Net]) -> None:
    t, _ = load_fixture("swinir")
    with torch.no_grad():
        out = nets["swinir"](t["direct0.input"].double())
    assert out.dtype == torch.float64


def test_state_dict_round_trip(nets: dict[str, Stage1Net]) -> None:
    fresh = build_stage1("scunet", preset="tiny")
    load_strict(fresh.net, nets["scunet"].net.state_dict(), "scunet")
    t, _ = load_fixture("scunet")
    with torch.no_grad():
        assert_forward_close(fresh(t["input"]), t["output"], "scunet round trip")
