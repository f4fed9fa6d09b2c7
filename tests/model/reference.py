"""Golden tensors produced by the original DiffBIR code with random weights (spec: tests/reference/README.md).

They live in the repo (`tests/reference/`, refreshed by `scripts/refresh_reference.py`), so the suite runs on
any clone; `DIFFBIR_REFERENCE_DIR` points the tests at another copy.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

REFERENCE_DIR = Path(
    os.environ.get("DIFFBIR_REFERENCE_DIR") or Path(__file__).resolve().parents[1] / "reference"
)
TINY_DIR = REFERENCE_DIR / "tiny"
MANIFEST_DIR = REFERENCE_DIR / "manifests"


def load_fixture(name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and the `meta` settings of `tiny/<name>.safetensors`."""
    tensors = load_file(str(TINY_DIR / f"{name}.safetensors"))
    meta = json.loads((TINY_DIR / f"{name}.json").read_text()).get("meta", {})
    return tensors, meta


def tiny_configs() -> dict[str, Any]:
    return json.loads((TINY_DIR / "tiny_configs.json").read_text())


def load_manifest(name: str) -> dict[str, Any]:
    return json.loads((MANIFEST_DIR / f"{name}.json").read_text())


def assert_forward_close(actual: torch.Tensor, ref: torch.Tensor, what: str = "") -> None:
    """README tolerance for single forwards: max|a-b| <= 1e-4 * (1 + max|ref|)."""
    _assert_close(actual, ref, 1e-4 * (1 + ref.abs().max().item()), what)


def assert_run_close(actual: torch.Tensor, ref: torch.Tensor, what: str = "") -> None:
    """README tolerance for sampler and guidance runs: max|a-b| <= 1e-3 * max|ref|."""
    _assert_close(actual, ref, 1e-3 * ref.abs().max().item(), what)


def _assert_close(actual: torch.Tensor, ref: torch.Tensor, tol: float, what: str) -> None:
    assert actual.shape == ref.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(ref.shape)}"
    err = (actual.detach().double().cpu() - ref.double()).abs().max().item()
    assert err <= tol, f"{what}: max abs error {err:.3e} > tolerance {tol:.3e}"


@contextlib.contextmanager
def replay_noise(draws: list[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
    """Make torch.randn / torch.randn_like return the stored draws in order (README: 'To replay noise').

    Yields the list of draws still unused, so a test can assert every draw was consumed.
    """
    remaining = list(draws)
    real_randn, real_randn_like = torch.randn, torch.randn_like

    def _next(shape: torch.Size, dtype: torch.dtype | None, device: Any) -> torch.Tensor:
        if not remaining:
            raise AssertionError("more random draws than the reference made")
        value = remaining.pop(0)
        assert tuple(value.shape) == tuple(shape), f"draw shape {tuple(shape)} != stored {tuple(value.shape)}"
        return value.to(dtype=dtype or value.dtype, device=device or value.device)

    def fake_randn(
        *size: Any, generator: Any = None, dtype: Any = None, device: Any = None, layout: Any = None, **_: Any
    ) -> torch.Tensor:
        shape = torch.Size(
            size[0] if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else size
        )
        return _next(shape, dtype, device)

    def fake_randn_like(
        x: torch.Tensor,
        *,
        generator: Any = None,
        dtype: Any = None,
        device: Any = None,
        layout: Any = None,
        **_: Any,
    ) -> torch.Tensor:
        return _next(x.shape, dtype or x.dtype, device or x.device)

    torch.randn, torch.randn_like = fake_randn, fake_randn_like  # type: ignore[assignment]
    try:
        yield remaining
    finally:
        torch.randn, torch.randn_like = real_randn, real_randn_like  # type: ignore[assignment]


def stored_draws(tensors: dict[str, torch.Tensor], prefix: str) -> list[torch.Tensor]:
    """`{prefix}noise.00`, `{prefix}noise.01`, ... in order."""
    keys = sorted(k for k in tensors if k.startswith(prefix + "noise."))
    return [tensors[k] for k in keys]
