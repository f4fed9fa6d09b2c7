"""The whole stage 2 through `DiffBIRPipeline.stage2` / `postprocess`, replaying the reference's noise.

Both `pipeline_stage2` runs (v2: noise start, CFG 4; v2.1: zero-SNR v-prediction, "cond" start, noise
augmentation, rescaled CFG, strength 0.8) must reproduce the golden decoded image, the post-processed image
and the uint8 output (+-1), and the intermediates of `pipeline_stage2_intermediates` along the way.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from model import imageops
from model.cldm import ControlLDM
from model.options import RestoreOptions, Stage2Settings
from model.pipeline import DiffBIRPipeline
from model.stage1 import build_stage1
from tests.model.reference import (
    assert_forward_close,
    assert_run_close,
    load_fixture,
    replay_noise,
    stored_draws,
)

STAGE2, STAGE2_META = load_fixture("pipeline_stage2")
INTER, _ = load_fixture("pipeline_stage2_intermediates")
RUNS = {run["name"]: run for run in STAGE2_META["runs"]}


def _pipeline(cldm: ControlLDM) -> DiffBIRPipeline:
    net = build_stage1(
        "swinir", preset="tiny", device="cpu"
    )  # unused by stage 2; the pipeline needs one per task
    return DiffBIRPipeline({"sr": cldm}, {"sr": net}, device="cpu", min_short_edge=0)


def _run(cldm: ControlLDM, name: str) -> tuple[torch.Tensor, dict[str, torch.Tensor], Any]:
    """Run stage 2 of `name` with replayed noise; also capture the intermediates the pipeline computes."""
    meta = RUNS[name]
    pipe = _pipeline(cldm)
    settings = Stage2Settings(
        start_point=meta["start_point_type"],
        noise_aug=meta["noise_aug"],
        rescale_cfg=meta["rescale_cfg"],
        strength=meta["strength"],
    )
    options = RestoreOptions(
        steps=meta["steps"],
        sampler="spaced",
        prompt=meta["pos_prompt"],
        negative_prompt=meta["neg_prompt"],
        cfg_scale=meta["cfg"],
        fidelity=0.0,
    )
    captured: dict[str, torch.Tensor] = {}
    import model.pipeline as pipeline_mod

    real_sample = pipeline_mod.sample

    def spy_sample(
        model: Any, sampler: Any, x_T: torch.Tensor, cond: Any, uncond: Any, *args: Any, **kw: Any
    ):
        captured.update(
            x_T=x_T,
            c_img_aug=cond.c_img,
            cond_c_txt=cond.c_txt,
            uncond_c_txt=uncond.c_txt,
            uncond_c_img=uncond.c_img,
        )
        z = real_sample(model, sampler, x_T, cond, uncond, *args, **kw)
        captured["z_final"] = z
        return z

    pipeline_mod.sample = spy_sample
    try:
        with replay_noise(stored_draws(STAGE2, f"{name}.")) as left:
            decoded = pipe.stage2(STAGE2[f"{name}.cond_img"], options, None, settings=settings)
            assert not left, f"{len(left)} stored draws were not used"
    finally:
        pipeline_mod.sample = real_sample
    return decoded, captured, pipe


@pytest.mark.parametrize("name", ["v2_noise", "v21_cond_aug"])
def test_stage2_matches_reference(name: str, tiny_cldm: ControlLDM, tiny_cldm_v21: ControlLDM) -> None:
    cldm = tiny_cldm if RUNS[name]["diffusion"] == "sd" else tiny_cldm_v21
    decoded, captured, pipe = _run(cldm, name)
    p = f"{name}."
    assert_forward_close(captured["cond_c_txt"], INTER[p + "cond.c_txt"], "cond c_txt")
    assert_forward_close(captured["uncond_c_txt"], INTER[p + "uncond.c_txt"], "uncond c_txt")
    assert_forward_close(captured["c_img_aug"], INTER[p + "c_img_aug"], "c_img after noise aug")
    assert captured["uncond_c_img"] is captured["c_img_aug"], "uncond must get the SAME c_img"
    assert_forward_close(captured["x_T"], INTER[p + "x_T"], "x_T")
    assert_run_close(captured["z_final"], INTER[p + "z_final"], "z_final")
    assert_run_close(decoded, STAGE2[p + "decoded"], "decoded")

    out_hw = tuple(RUNS[name]["output_size"])
    post = pipe.postprocess(decoded, STAGE2[p + "cond_img"], out_hw, "wavelet")
    assert_run_close(post, STAGE2[p + "postprocessed"], "postprocessed")
    ours = imageops.to_uint8(post).astype(np.int16)
    ref = STAGE2[p + "uint8"].permute(0, 2, 3, 1).numpy().astype(np.int16)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 1


def test_stage2_pads_to_64_and_crops_back(tiny_cldm: ControlLDM) -> None:
    """72x56 pads to 128x64 (latent 16x8) and comes back as 72x56."""
    decoded, captured, _ = _run(tiny_cldm, "v2_noise")
    assert tuple(captured["x_T"].shape) == (1, 4, 16, 8)
    assert tuple(decoded.shape) == (1, 3, 72, 56)
