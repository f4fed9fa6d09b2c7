"""Checkpoint reading (formats, the reference's unwrapping rules) and strict loading with readable errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from model.checkpoints import (
    check_state_dict,
    load_state_dict,
    load_strict,
    read_checkpoint,
    select_prefix,
    unwrap_state_dict,
)
from model.errors import CheckpointMismatchError, ModelError


class LightningLikeHyperParams:
    """A non-tensor object such as Lightning stores in `.ckpt` files (weights_only refuses it)."""

    def __init__(self) -> None:
        self.lr = 1e-4


def _tensors() -> dict[str, torch.Tensor]:
    return {"conv.weight": torch.randn(4, 3, 3, 3), "conv.bias": torch.randn(4)}


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".ckpt", ".bin"])
def test_torch_formats_plain(tmp_path: Path, suffix: str) -> None:
    sd = _tensors()
    torch.save(sd, tmp_path / f"w{suffix}")
    assert _same(load_state_dict(tmp_path / f"w{suffix}"), sd)


def test_mmap_reading(tmp_path: Path) -> None:
    sd = _tensors()
    torch.save({"state_dict": sd}, tmp_path / "w.ckpt")
    assert _same(load_state_dict(tmp_path / "w.ckpt", mmap=True), sd)


def test_safetensors(tmp_path: Path) -> None:
    sd = _tensors()
    save_file(sd, str(tmp_path / "w.safetensors"))
    assert _same(load_state_dict(tmp_path / "w.safetensors"), sd)


def test_state_dict_wrapper_and_module_prefix(tmp_path: Path) -> None:
    sd = _tensors()
    wrapped = {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "global_step": 10}
    torch.save(wrapped, tmp_path / "w.ckpt")
    assert _same(load_state_dict(tmp_path / "w.ckpt"), sd)


def test_module_rule_is_decided_by_the_first_key_only() -> None:
    t = torch.zeros(1)
    # first key without "module": nothing is stripped, even from later "module." keys
    assert list(unwrap_state_dict({"a": t, "module.b": t})) == ["a", "module.b"]
    # first key with "module": 7 characters go from EVERY key, exactly like the reference
    assert list(unwrap_state_dict({"module.a": t, "decoder.b": t, "modules.c": t})) == ["a", ".b", ".c"]


def test_state_dict_entry_wins_over_other_entries() -> None:
    t = torch.zeros(1)
    assert list(unwrap_state_dict({"state_dict": {"x": t}, "optimizer_states": [], "y": t})) == ["x"]


def test_non_dict_checkpoint_is_refused() -> None:
    with pytest.raises(ModelError, match="expected a dict"):
        unwrap_state_dict([torch.zeros(1)])
    with pytest.raises(ModelError, match="'state_dict' entry"):
        unwrap_state_dict({"state_dict": 3})


def test_lightning_objects_need_trust(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sd = _tensors()
    torch.save({"state_dict": sd, "hyper_parameters": LightningLikeHyperParams()}, tmp_path / "w.ckpt")
    with pytest.raises(ModelError, match="not trusted"):
        load_state_dict(tmp_path / "w.ckpt", trusted=False)
    assert _same(load_state_dict(tmp_path / "w.ckpt", trusted=True), sd)
    assert "full unpickle" in caplog.text


def test_missing_file_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        read_checkpoint(tmp_path / "nope.pth")
    (tmp_path / "w.onnx").write_bytes(b"x")
    with pytest.raises(ModelError, match="unsupported checkpoint format"):
        read_checkpoint(tmp_path / "w.onnx")


def test_select_prefix() -> None:
    t = torch.zeros(1)
    sd = {"first_stage_model.a": t, "first_stage_model.b.c": t, "model.diffusion_model.x": t}
    assert list(select_prefix(sd, "first_stage_model.")) == ["a", "b.c"]
    assert select_prefix(sd, "cond_stage_model.") == {}


def test_load_strict_loads_values() -> None:
    net, sd = _Net(), _tensors()
    load_strict(net, sd, "tiny net")
    assert torch.equal(net.conv.weight, sd["conv.weight"])


def test_load_strict_assign_fills_a_meta_module() -> None:
    with torch.device("meta"):
        net = _Net()
    sd = _tensors()
    load_strict(net, sd, "meta net", assign=True)
    assert net.conv.weight.device.type == "cpu" and torch.equal(net.conv.bias, sd["conv.bias"])


def test_load_strict_reports_every_problem_and_leaves_module_untouched() -> None:
    net = _Net()
    before = net.conv.weight.detach().clone()
    bad = {"conv.weight": torch.randn(4, 3, 5, 5), "conv.extra": torch.randn(2)}
    with pytest.raises(CheckpointMismatchError) as info:
        load_strict(net, bad, "tiny net")
    err = info.value
    assert err.missing == ["conv.bias"]
    assert err.unexpected == ["conv.extra"]
    assert err.shape_mismatches == [("conv.weight", (4, 3, 5, 5), (4, 3, 3, 3))]
    text = str(err)
    for part in ("tiny net", "conv.bias", "conv.extra", "[4, 3, 5, 5] vs [4, 3, 3, 3]"):
        assert part in text
    assert torch.equal(net.conv.weight, before)


def test_check_state_dict_passes_on_exact_match() -> None:
    check_state_dict(_Net(), _tensors(), "tiny net")
