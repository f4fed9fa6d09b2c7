"""Per-version and per-task behaviour of `DiffBIRPipeline`, checked against the official DiffBIR inference
code (`diffbir/pipeline.py`, `diffbir/inference/*_loop.py`, README commands): the stage-1 resize order, the
nets and diffusion of each version, and the official default options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model import imageops
from model.errors import InvalidInputError
from model.options import OFFICIAL_DEFAULT_NEGATIVE_PROMPT, RestoreOptions, RestoreResult
from model.pipeline import DiffBIRPipeline
from model.planning import TilePlan
from model.presets import OFFICIAL_V21_NEGATIVE_PROMPT, OFFICIAL_V21_POSITIVE_PROMPT, default_options


@pytest.fixture(scope="module")
def pipe() -> DiffBIRPipeline:
    return DiffBIRPipeline.from_preset("tiny", version="v2", device="cpu", precision="fp32")


def _lq(h: int, w: int) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(h * 1000 + w))


@torch.no_grad()
def test_swinir_runs_at_the_diffusion_size(pipe: DiffBIRPipeline) -> None:
    """SwinIRPipeline: resize to the output size, raise the short side to 512 (64 tiny), THEN the net."""
    lq = _lq(12, 20)
    got = pipe.run_stage1(lq, "face", (12, 20), TilePlan())
    net = pipe.stage1["face"]
    assert net.kind == "swinir"
    want = net(imageops.resize_short_edge(lq, pipe.min_short_edge))
    assert got.shape == (1, 3, 64, 106)
    assert torch.equal(got, want.float())  # also: not clamped, as the reference


@torch.no_grad()
def test_scunet_runs_at_the_output_size_then_is_raised(pipe: DiffBIRPipeline) -> None:
    lq = _lq(12, 20)
    got = pipe.run_stage1(lq, "denoise", (12, 20), TilePlan())
    assert pipe.stage1["denoise"].kind == "scunet"
    want = imageops.resize_short_edge(pipe.stage1["denoise"](lq).float(), pipe.min_short_edge)
    assert torch.equal(got, want)


@torch.no_grad()
@pytest.mark.parametrize("upscale_hw, raised", [((24, 40), True), ((70, 84), False)])
def test_bsrnet_output_is_resized_once(
    pipe: DiffBIRPipeline, upscale_hw: tuple[int, int], raised: bool
) -> None:
    """BSRNetPipeline: the x4 result goes straight to the short side 512 when the output is smaller, else to
    the output size -- one resize, never output size first and then raised."""
    lq = _lq(12, 20) if raised else _lq(20, 24)
    got = pipe.run_stage1(lq, "sr", upscale_hw, TilePlan())
    y4 = pipe.stage1["sr"](lq).float()
    want = (
        imageops.resize_short_edge(y4, pipe.min_short_edge)
        if raised
        else imageops.resize_bicubic_aa(y4, upscale_hw)
    )
    assert torch.equal(got, want)


def test_a_thin_strip_is_refused_before_it_becomes_huge(pipe: DiffBIRPipeline) -> None:
    """8 x 2000 at x1 fits `max_pixels`, but stage 2 would run at 64 x 16000: a clear error, not an OOM."""
    strict = DiffBIRPipeline(
        pipe.models,
        pipe.stage1,
        preset="tiny",
        min_short_edge=pipe.min_short_edge,
        tiles=pipe.tiles,
        max_pixels=100_000,
    )
    strip = np.zeros((8, 2000, 3), dtype=np.uint8)
    with pytest.raises(InvalidInputError, match="stage-2"):
        strict.restore(strip, RestoreOptions(task="denoise", upscale=1.0, steps=1))


@pytest.mark.parametrize("version", ["v1", "v2", "v2.1"])
def test_version_diffusion_and_stage1(version: str) -> None:
    p = DiffBIRPipeline.from_preset("tiny", version=version, device="cpu", precision="fp32", tasks=["sr"])
    v21 = version == "v2.1"
    assert p.diffusion.parameterization == ("v" if v21 else "eps")
    assert p.diffusion.zero_snr is v21
    assert p.stage1["sr"].kind == {"v1": "swinir", "v2": "bsrnet", "v2.1": "swinir"}[version]
    s = p.stage2_settings
    assert (s.start_point, s.noise_aug, s.rescale_cfg, s.strength) == ("noise", 0, False, 1.0)


def test_official_default_options() -> None:
    """v1 release: spaced 50 steps without CFG; README commands: v2 = spaced 50 steps, cfg 4, empty prompt,
    the 'low quality' negative prompt; v2.1 = 10 steps of a DPM-Solver++ family sampler, cfg 8, the
    'Cinematic' / 'painting' prompts; upstream's default sampler edm_dpm++_3m_sde."""
    for version, cfg in (("v1", 1.0), ("v2", 4.0)):
        for task in ("sr", "face", "denoise"):
            o = default_options(version, task)
            assert (o.sampler, o.steps, o.cfg_scale, o.prompt) == ("spaced", 50, cfg, "")
            assert o.negative_prompt == OFFICIAL_DEFAULT_NEGATIVE_PROMPT
            assert RestoreOptions().negative_prompt is None  # unset: the weights version decides
            assert o.upscale == (4.0 if task == "sr" else 1.0) and o.color_fix == "wavelet"
    o = default_options("v2.1", "face")
    assert (o.sampler, o.steps, o.cfg_scale, o.upscale) == ("edm_dpm++_3m_sde", 10, 8.0, 1.0)
    assert o.prompt == OFFICIAL_V21_POSITIVE_PROMPT and o.prompt.startswith("Cinematic, High Contrast")
    assert o.negative_prompt == OFFICIAL_V21_NEGATIVE_PROMPT and o.negative_prompt.startswith("painting")
    assert default_options("v2", "sr", seed=7).seed == 7
    with pytest.raises(InvalidInputError):
        default_options("v3", "sr")


@pytest.mark.parametrize("version", ["v2", "v2.1"])
def test_cli_uses_the_official_defaults_of_its_version(
    version: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    from model import cli

    seen: list[RestoreOptions] = []

    class Recorder:
        def restore(
            self, image: np.ndarray, options: RestoreOptions, progress: object = None
        ) -> RestoreResult:
            seen.append(options)
            return RestoreResult(np.zeros((2, 2, 3), np.uint8), {}, None, 0, options.steps)

    monkeypatch.setattr(DiffBIRPipeline, "from_preset", classmethod(lambda cls, **kw: Recorder()))
    src = tmp_path / "in.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(src)
    argv = ["restore", str(src), "-o", str(tmp_path / "out.png"), "--version", version, "--task", "face"]
    assert cli.main(argv) == 0
    assert seen[-1] == default_options(version, "face", fidelity=0.5)
    assert cli.main([*argv, "--cfg", "2", "--steps", "3", "--prompt", "x"]) == 0
    assert (seen[-1].cfg_scale, seen[-1].steps, seen[-1].prompt) == (2.0, 3, "x")


def test_x1_nets_get_the_input_upscaled_with_pillow_bicubic(
    pipe: DiffBIRPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The official loops do `lq.resize((int(w*s), int(h*s)), Image.BICUBIC)` on the uint8 input before a
    x1 net (SwinIR here); torch's bicubic has another kernel, so the net's input must match Pillow's."""
    from PIL import Image

    net = pipe.stage1["face"]
    seen: list[torch.Tensor] = []
    original = net.forward
    monkeypatch.setattr(net, "forward", lambda x: seen.append(x.clone()) or original(x))
    image = np.random.default_rng(4).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    pipe.restore(image, RestoreOptions(task="face", upscale=2.0, steps=1, seed=0))
    upscaled = np.asarray(Image.fromarray(image).resize((40, 24), Image.Resampling.BICUBIC))
    want = imageops.resize_short_edge(imageops.uint8_to_tensor(upscaled), pipe.min_short_edge)
    assert len(seen) == 1 and torch.equal(seen[0], want)
