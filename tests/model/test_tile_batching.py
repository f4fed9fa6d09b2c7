"""Tile batching: the windows of one image share a forward (latent, stage-1 and VAE tiles) and give what one
forward per window gives (fp32, up to the nets' own batch-size rounding), sized to the memory budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model import planning
from model.cldm import Condition, ControlLDM
from model.errors import InvalidInputError
from model.options import RestoreOptions
from model.pipeline import DiffBIRPipeline
from model.planning import MAX_TILES_PER_FORWARD, NetSizes, Planner, tiles_per_forward
from model.sampling import SpacedSampler, Tiling, sample
from model.sampling.tiled import tiled_denoiser
from model.schedule import make_diffusion
from model.stage1 import build_stage1
from model.tiled_vae import DECODER_PAD, ENCODER_PAD
from model.tiling import tile_coords, tiled_apply, window_batches

ATOL = 1e-5  # fp32: batched convs/matmuls may pick other kernels than batch 1, nothing more


def _close(batched: torch.Tensor, sequential: torch.Tensor) -> None:
    scale = 1 + sequential.abs().max().item()
    err = (batched.double() - sequential.double()).abs().max().item()
    assert err <= ATOL * scale, f"batched differs from per-window by {err:.3e}"


@pytest.mark.parametrize(
    "n, batch, sizes", [(11, 4, [4, 4, 3]), (9, 4, [3, 3, 3]), (5, 8, [5]), (3, 1, [1] * 3)]
)
def test_window_batches_are_balanced_and_in_order(n: int, batch: int, sizes: list[int]) -> None:
    coords = [(i, i + 1, 0, 1) for i in range(n)]
    groups = window_batches(coords, batch)
    assert [len(g) for g in groups] == sizes
    assert [c for g in groups for c in g] == coords
    with pytest.raises(InvalidInputError):
        window_batches(coords, 0)


def test_tiled_apply_batched_equals_per_window() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.GroupNorm(2, 8),
        torch.nn.SiLU(),
        torch.nn.Conv2d(8, 3, 3, padding=1),
    ).eval()
    up = torch.nn.Sequential(net, torch.nn.Upsample(scale_factor=2))
    x = torch.randn(2, 3, 40, 56)
    calls: list[tuple[int, int]] = []
    with torch.no_grad():
        one = tiled_apply(up, x, 16, 12, scale=2)
        many = tiled_apply(up, x, 16, 12, scale=2, batch=4, progress=lambda d, t: calls.append((d, t)))
    _close(many, one)
    n = len(tile_coords(40, 56, 16, 12))
    assert calls[-1] == (n, n) and len(calls) == len(window_batches(tile_coords(40, 56, 16, 12), 4))


def test_tiled_denoiser_batched_equals_per_window(tiny_cldm: ControlLDM) -> None:
    """CFG-shaped input (batch 2: cond + uncond, different text): window-major stacking keeps each window
    with its own text and condition slice."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 12, 16, generator=g)
    cond = Condition(
        torch.randn(2, 77, tiny_cldm.cfg.unet.context_dim, generator=g),
        torch.randn(2, 4, 12, 16, generator=g),
    )
    t = torch.tensor([500, 500])
    with torch.no_grad():
        one = tiled_denoiser(tiny_cldm, Tiling(8, 4))(x, t, cond, 1.0)
        for batch in (2, 3, 8):
            _close(tiled_denoiser(tiny_cldm, Tiling(8, 4, batch=batch))(x, t, cond, 1.0), one)


def test_tiled_sampling_run_batched_equals_per_window(tiny_cldm: ControlLDM) -> None:
    g = torch.Generator().manual_seed(1)
    c_img = torch.randn(1, 4, 12, 12, generator=g)
    cond = Condition(tiny_cldm.text.encode(["a photo"]), c_img)
    uncond = Condition(tiny_cldm.text.encode(["low quality"]), c_img)
    x_T = torch.randn(1, 4, 12, 12, generator=g)
    runs = []
    for batch in (1, 4):
        sampler = SpacedSampler(make_diffusion())
        gen = [torch.Generator().manual_seed(7)]
        runs.append(
            sample(
                tiny_cldm, sampler, x_T, cond, uncond, 3, 4.0, 1.0, tiling=Tiling(8, 4, batch), generator=gen
            )
        )
    _close(runs[1], runs[0])


def test_vae_tiles_batched_equal_per_window(tiny_cldm: ControlLDM) -> None:
    vae = tiny_cldm.vae
    g = torch.Generator().manual_seed(2)
    image = torch.rand(1, 3, 80, 112, generator=g) * 2 - 1
    z = torch.randn(1, 4, 10, 14, generator=g)
    with torch.no_grad():
        p1 = vae.posterior_tiled(image, tile=48, stride=32)
        p4 = vae.posterior_tiled(image, tile=48, stride=32, batch=4)
        _close(p4.parameters, p1.parameters)
        _close(vae.encode_tiled(image, 48, 32, batch=3), vae.encode_tiled(image, 48, 32))
        _close(vae.decode_tiled(z, tile=4, stride=3, batch=5), vae.decode_tiled(z, tile=4, stride=3))


@pytest.mark.parametrize("kind", ["swinir", "bsrnet", "scunet"])
def test_stage1_tiles_batched_equal_per_window(kind: str) -> None:
    torch.manual_seed(3)
    net = build_stage1(kind, preset="tiny")
    tile = 64 if kind == "swinir" else 16
    img = torch.rand(1, 3, tile * 2, tile + tile // 2)
    with torch.no_grad():
        one = net.forward_tiled(img, tile, tile * 3 // 4)
        _close(net.forward_tiled(img, tile, tile * 3 // 4, batch=4), one)


def test_tiles_per_forward_follows_the_budget() -> None:
    assert tiles_per_forward(100.0, 350, 20) == 3
    assert tiles_per_forward(100.0, 50, 20) == 1  # never zero: one window always runs
    assert tiles_per_forward(100.0, 10**9, 5) == 5  # no more than there are windows
    assert tiles_per_forward(100.0, 10**9, 500) == MAX_TILES_PER_FORWARD


def test_planner_sizes_tile_batches_from_the_budget() -> None:
    """4096x4096 output in a 8 GB budget (fp16, full widths): the latent is tiled and as many 512 px windows
    share a forward as the UNet estimate allows; a budget one window less gives one batch less."""
    nets = NetSizes(elem=2, unet_width=320, vae_width=128, stage1_kind="swinir", stage1_scale=1)
    planner = Planner()
    window = planning.UNET_BYTES_PER_CELL * 2 * 64 * 64 * 2  # CFG: 2 rows
    plan = planner.plan((1024, 1024), (4096, 4096), nets, 1, True, 5 * window + 1)
    assert plan.latent is not None and plan.latent.batch == 5
    assert planner.plan((1024, 1024), (4096, 4096), nets, 1, True, 4 * window + 1).latent.batch == 4
    assert plan.stage1_tile and plan.stage1_batch >= 1
    roomy = planner.plan((1024, 1024), (4096, 4096), nets, 1, True, 1000 * window)
    assert not roomy.latent  # fits untiled


def test_planner_lets_vae_tiles_wait_on_the_device_within_the_budget() -> None:
    """The tiled VAE's waiting tiles may hold what the budget leaves after its largest one-tile forward (the
    tile's core plus its pad on every side, by the same per-pixel estimate); nothing when it runs untiled."""
    nets = NetSizes(elem=2, unet_width=320, vae_width=128, stage1_kind="swinir", stage1_scale=1)
    budget = 6 << 30
    plan = Planner().plan((1024, 1024), (4096, 4096), nets, 1, True, budget)
    assert plan.vae_encode == 512 and plan.vae_decode == 64
    vae = planning.VAE_BYTES_PER_PIXEL * 2
    encode_tile = (512 + 2 * ENCODER_PAD) ** 2
    decode_tile = ((64 + 2 * DECODER_PAD) * 8) ** 2
    assert plan.vae_keep_bytes == budget - vae * max(encode_tile, decode_tile) > 0
    roomy = Planner().plan((256, 256), (1024, 1024), nets, 1, True, 1 << 40)
    assert not roomy.vae_decode and roomy.vae_keep_bytes == 0


def test_pipeline_batched_tiles_give_the_per_window_image(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tiny pipeline whose budget tiles every stage with several windows per forward gives the image the
    same budget gives with one window per forward."""
    pipe = DiffBIRPipeline.from_preset("tiny", version="v2", device="cpu", precision="fp32", tasks=["sr"])
    budgets = [2**i for i in range(10, 40)]
    budget = next(
        b
        for b in budgets
        if (p := pipe.planner.plan((24, 24), (96, 96), pipe._net_sizes("sr"), 1, True, b)).latent
        and p.latent.batch > 1
    )
    tight = DiffBIRPipeline(
        pipe.models,
        pipe.stage1,
        preset="tiny",
        min_short_edge=pipe.min_short_edge,
        tiles=pipe.tiles,
        memory_budget_bytes=budget,
    )
    plan = tight.plan((24, 24), (96, 96), "sr", 1, True)
    assert plan.latent is not None and plan.latent.batch > 1
    image = np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    options = RestoreOptions(upscale=4.0, seed=0, steps=2, fidelity=0.5)
    batched = tight.restore(image, options).image.astype(np.int16)
    monkeypatch.setattr(planning, "MAX_TILES_PER_FORWARD", 1)
    assert tight.plan((24, 24), (96, 96), "sr", 1, True).latent.batch == 1
    sequential = tight.restore(image, options).image.astype(np.int16)
    assert np.abs(batched - sequential).max() <= 1  # uint8 truncation of fp32 rounding at most
