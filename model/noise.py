"""Gaussian draws for sampling: seeded per image, the same on every device, no per-step host sync."""

from __future__ import annotations

import torch
from diffusers.utils.torch_utils import randn_tensor

Generators = torch.Generator | list[torch.Generator] | None


def draw_noise(like: torch.Tensor, generator: Generators = None) -> torch.Tensor:
    """N(0, I) shaped like `like`; one generator per sample when a list is given (per-job seeds in a batch).

    With no generator it is one `torch.randn` call, as in the reference (its noise replay relies on that).
    Generators draw on their own device, so a seed gives the same noise whatever device samples. When CPU
    generators feed CUDA sampling, the draw is copied from pinned memory without blocking: diffusers'
    `randn_tensor` copies from pageable memory, which makes the host wait for the GPU at every step and stops
    it from queuing the next step's kernels while the current ones run.
    """
    gens = generator if isinstance(generator, list) else [generator] if generator is not None else []
    if not gens or like.device.type != "cuda" or gens[0].device.type != "cpu":
        return randn_tensor(tuple(like.shape), generator=generator, device=like.device, dtype=like.dtype)
    return host_draw(tuple(like.shape), generator, like.dtype).pin_memory().to(like.device, non_blocking=True)


def host_draw(
    shape: tuple[int, ...], generator: torch.Generator | list[torch.Generator], dtype: torch.dtype
) -> torch.Tensor:
    """The draws `randn_tensor` makes with CPU generators (one per sample for a list), left on the host."""
    if isinstance(generator, list):
        return torch.cat([torch.randn((1, *shape[1:]), generator=g, dtype=dtype) for g in generator])
    return torch.randn(shape, generator=generator, dtype=dtype)
