"""Per-step cost of the sampling loop, split into model time and everything else (the loop's own overhead).

    python benchmarks/sampler_bench.py [--steps 20] [--out results.json]

Runs `model.sampling.sample` (the loop the pipeline uses: CFG, guidance, sampler step, progress and cancel
hooks) on CPU with the `tiny` preset and a `mid` config defined here (model/config.py has only full and
tiny), for each sampler in `--samplers` (default: one of each kind). Two-call solvers (Heun, DPM++ SDE) call
the model twice per step, so compare their overhead, not their model time. The model is wrapped by a timer, so

    overhead per step = (loop time - time inside the model) / steps        (target: <= 1 ms/step)

On CPU every op is synchronous, so the split is exact; the overhead is what the GPU would wait for if the
loop were the bottleneck. Random weights: the numbers are about cost, not images.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.cldm import Condition
from model.config import ControlNetConfig, Stage2Config, TextConfig, UNetConfig, VAEConfig, get_preset
from model.guidance import Guidance
from model.loading import build_cldm
from model.sampling import SAMPLERS, make_sampler, sample
from model.schedule import make_diffusion

TARGET_OVERHEAD_MS = 1.0
# One of each kind: reference DDPM, upstream DDIM / DPM-Solver++, diffusers' DPM-Solver++, one- and two-call
# EDM solvers, the SDE solvers (v2.1's default last).
SAMPLERS_MEASURED = (
    "spaced",
    "ddim",
    "dpm++_m2",
    "dpmpp",
    "edm_euler",
    "edm_heun",
    "edm_dpm++_sde",
    "edm_dpm++_3m_sde",
)

# A mid-size config for CPU runs: 2x the tiny width, 3 levels, wider text; built with default init.
_MID_UNET = UNetConfig(
    model_channels=64,
    channel_mult=(1, 2, 2),
    attention_resolutions=(2, 1),
    num_res_blocks=2,
    num_head_channels=32,
    context_dim=256,
)
MID = Stage2Config(
    name="mid",
    unet=_MID_UNET,
    controlnet=ControlNetConfig(**_MID_UNET.__dict__),
    vae=VAEConfig(ch=64, ch_mult=(1, 2, 2, 2), num_res_blocks=1),
    text=TextConfig(width=256, heads=4, layers=4),
    labels=("benchmark only",),
)


class TimedModel:
    """Calls the model and adds the wall time spent inside it (synchronising CUDA around the call)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.seconds = 0.0
        self.calls = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Condition, strength: float) -> torch.Tensor:
        if x.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = self.model(x, t, cond, strength)
        if x.is_cuda:
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out


def bench(
    cfg: Stage2Config,
    sampler_name: str,
    steps: int,
    latent: int,
    batch: int,
    cfg_scale: float,
    guided: bool,
    repeats: int,
) -> dict[str, Any]:
    torch.manual_seed(0)
    model = build_cldm(cfg, "sd")
    diffusion = make_diffusion()
    c_img = torch.randn(batch, 4, latent, latent)
    c_txt = model.text.encode([""]).expand(batch, -1, -1)
    cond = Condition(c_txt, c_img)
    uncond = (
        Condition(model.text.encode(["low quality"]).expand(batch, -1, -1), c_img) if cfg_scale != 1 else None
    )
    target = torch.rand(batch, 3, latent * 8, latent * 8) * 2 - 1
    best: dict[str, float] | None = None
    for _ in range(repeats + 1):  # the first run warms up
        timed = TimedModel(model)
        guidance = Guidance(model.vae, target, scale=0.01) if guided else None
        x_T = torch.randn(batch, 4, latent, latent, generator=torch.Generator().manual_seed(0))
        start = time.perf_counter()
        sample(
            timed,
            make_sampler(sampler_name, diffusion),
            x_T,
            cond,
            uncond,
            steps,
            cfg_scale,
            1.0,
            guidance=guidance,
            progress=lambda stage, i, n: None,
            should_cancel=lambda: False,
            generator=[torch.Generator().manual_seed(i) for i in range(batch)],
        )
        total = time.perf_counter() - start
        run = {
            "total_ms_per_step": 1000 * total / steps,
            "model_ms_per_step": 1000 * timed.seconds / steps,
            "overhead_ms_per_step": 1000 * (total - timed.seconds) / steps,
            "model_calls": timed.calls,
        }
        if best is None or run["total_ms_per_step"] < best["total_ms_per_step"]:
            best = run
    assert best is not None
    best["overhead_ratio"] = best["overhead_ms_per_step"] / best["model_ms_per_step"]
    best["meets_target"] = best["overhead_ms_per_step"] <= TARGET_OVERHEAD_MS
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS_MEASURED), choices=sorted(SAMPLERS))
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    results: dict[str, Any] = {
        "torch": torch.__version__,
        "steps": args.steps,
        "target_overhead_ms": 1.0,
        "runs": [],
    }
    cases = [
        ("tiny", get_preset("tiny"), 8),
        ("mid", MID, 16),
    ]
    print(f"{'config':6} {'sampler':16} {'cfg':>4} {'guid':>5} {'model ms':>9} {'other ms':>9} {'ratio':>6}")
    for name, cfg, latent in cases:
        for sampler_name in args.samplers:
            for cfg_scale, guided in ((4.0, False), (1.0, False), (4.0, True)):
                r = bench(cfg, sampler_name, args.steps, latent, 1, cfg_scale, guided, args.repeats)
                r.update(config=name, sampler=sampler_name, cfg=cfg_scale, guidance=guided, latent=latent)
                results["runs"].append(r)
                model_ms, other_ms = r["model_ms_per_step"], r["overhead_ms_per_step"]
                print(
                    f"{name:6} {sampler_name:16} {cfg_scale:4.1f} {guided!s:>5} {model_ms:9.2f} "
                    f"{other_ms:9.3f} {r['overhead_ratio']:6.3f}",
                    flush=True,
                )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
