"""The error types other packages catch: what they carry and how they read."""

from __future__ import annotations

import pytest

from model.errors import (
    MAX_LISTED,
    CanceledError,
    CheckpointMismatchError,
    InvalidInputError,
    ModelError,
    OutOfMemoryError,
    WeightsMissingError,
)


def test_hierarchy() -> None:
    for cls in (InvalidInputError, CanceledError, WeightsMissingError, CheckpointMismatchError):
        assert issubclass(cls, ModelError)
    # A ModelError that is still a RuntimeError, as torch's own OOM, so code that caught that keeps working.
    assert issubclass(OutOfMemoryError, ModelError) and issubclass(OutOfMemoryError, RuntimeError)
    assert issubclass(InvalidInputError, ValueError)
    assert issubclass(WeightsMissingError, FileNotFoundError)


def test_weights_missing_lists_files_dir_and_hint() -> None:
    err = WeightsMissingError(["v2.pth", "BSRNet.pth"], "/w", "Download them with: python -m model download")
    assert err.missing == ["v2.pth", "BSRNet.pth"]
    assert err.weights_dir == "/w"
    text = str(err)
    assert "2 weight file(s) missing in /w" in text
    assert "  - v2.pth\n  - BSRNet.pth" in text
    assert text.endswith("Download them with: python -m model download")


def test_weights_missing_default_hint_names_the_command() -> None:
    assert "python -m model download" in str(WeightsMissingError(["x.ckpt"]))


def test_checkpoint_mismatch_lists_each_section() -> None:
    err = CheckpointMismatchError(
        "SwinIR", missing=["a.weight"], unexpected=["b.bias"], shape_mismatches=[("c.weight", (3, 4), (4, 3))]
    )
    assert (err.missing, err.unexpected) == (["a.weight"], ["b.bias"])
    assert err.shape_mismatches == [("c.weight", (3, 4), (4, 3))]
    text = str(err)
    assert text.startswith("checkpoint does not match SwinIR:")
    assert "1 missing keys:\n    a.weight" in text
    assert "1 unexpected keys:\n    b.bias" in text
    assert "c.weight: [3, 4] vs [4, 3]" in text


def test_checkpoint_mismatch_truncates_long_listings() -> None:
    keys = [f"k{i}" for i in range(MAX_LISTED + 7)]
    text = str(CheckpointMismatchError("net", missing=keys))
    assert f"{MAX_LISTED + 7} missing keys" in text
    assert f"k{MAX_LISTED - 1}" in text and f"k{MAX_LISTED}\n" not in text
    assert "... and 7 more" in text
    assert "unexpected" not in text  # empty sections are left out


def test_raise_and_catch_as_model_error() -> None:
    with pytest.raises(ModelError, match="canceled"):
        raise CanceledError("canceled by user")
