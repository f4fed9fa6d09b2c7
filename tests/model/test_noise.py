from __future__ import annotations

import torch
from diffusers.utils.torch_utils import randn_tensor

from model.noise import draw_noise, host_draw


def _gens(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_host_draw_matches_randn_tensor_for_one_and_many_generators() -> None:
    # The CUDA path draws with host_draw and copies from pinned memory; a seed must give the same noise as the
    # CPU path (randn_tensor), or results would depend on the device.
    shape = (3, 4, 8, 8)
    assert torch.equal(
        host_draw(shape, _gens(7)[0], torch.float32), randn_tensor(shape, generator=_gens(7)[0])
    )
    assert torch.equal(
        host_draw(shape, _gens(1, 2, 3), torch.float32), randn_tensor(shape, generator=_gens(1, 2, 3))
    )


def test_draw_noise_per_sample_generators_make_batches_equal_single_runs() -> None:
    like = torch.empty(2, 4, 8, 8)
    batch = draw_noise(like, _gens(5, 9))
    assert torch.equal(batch[1:], draw_noise(like[:1], _gens(9)))
    assert not torch.equal(batch[0], batch[1])
