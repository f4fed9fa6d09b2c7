"""Stage-2 speed and memory on one GPU with full-size RANDOM weights (no downloads): one prepared script.

    python benchmarks/gpu.py --out results.json          # H100/H200, well under 8 minutes incl. warm-up
    python benchmarks/gpu.py --small --out small.json    # CPU: tiny/mid configs, batching and overhead ratios

Measures (s/image through `DiffBIRPipeline.restore`, 512x512 output from a 128x128 input, sr x4):
- 50-step spaced DDPM with guidance (fidelity 0.5) + CFG 4; 50-step without CFG (empty prompt, cfg 1);
  10-step DPM-Solver++ (fast mode);
- batch 1/4/8 (`restore_batch`, 20 steps) images/s with and without CFG;
- 2048x2048 and 4096x4096 outputs under a 12 GB total budget (tiled automatically), with peak memory;
- a baseline in the same run: fp32, CFG as two forwards, no compile, no channels_last -- and the ratios.
Random weights give meaningless images; the timings are those of the real nets (same shapes and kernels).
Only torch, diffusers, open_clip, spandrel, safetensors, numpy and pillow are needed.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sampler_bench import MID  # the same mid config as the CPU loop benchmark

from model.config import Stage2Config, get_preset
from model.loading import build_cldm
from model.pipeline import (
    FULL_TILES,
    TINY_TILES,
    DiffBIRPipeline,
    RestoreOptions,
    Stage2Settings,
)
from model.stage1 import build_stage1

GB = 1 << 30


class SplitCFG:
    """Baseline CFG: cond and uncond as two forwards of batch B instead of one of 2B (the unoptimised way)."""

    def __init__(self, model: Any) -> None:
        self._model = model

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Any, strength: float) -> torch.Tensor:
        b = x.shape[0] // 2
        if b == 0 or cond.c_txt.shape[0] != 2 * b or x.shape[0] % 2:
            return self._model(x, t, cond, strength)
        from model.cldm import Condition

        first = self._model(x[:b], t[:b], Condition(cond.c_txt[:b], cond.c_img[:b]), strength)
        second = self._model(x[b:], t[b:], Condition(cond.c_txt[b:], cond.c_img[b:]), strength)
        return torch.cat([first, second])


def make_pipeline(
    cfg: Stage2Config | str,
    device: torch.device,
    dtype: torch.dtype,
    *,
    channels_last: bool,
    compile: bool,
    split_cfg: bool = False,
    budget: int | None = None,
) -> DiffBIRPipeline:
    torch.manual_seed(0)
    cfg = get_preset(cfg) if isinstance(cfg, str) else cfg
    small = cfg.name != "full"
    stage1_preset = "tiny" if small else "full"
    cldm = build_cldm(cfg, "sd", device=device).to(dtype=dtype)
    net = build_stage1("bsrnet", preset=stage1_preset, device=device).to(dtype=dtype).eval()
    model: Any = SplitCFG(cldm) if split_cfg else cldm
    return DiffBIRPipeline(
        {"sr": model},
        {"sr": net},
        version="v2",
        preset=cfg.name,
        device=device,
        max_pixels=None,
        memory_budget_bytes=budget,
        min_short_edge=64 if small else 512,
        stage2_settings=Stage2Settings(),
        tiles=TINY_TILES if small else FULL_TILES,
        channels_last=channels_last,
        compile=compile,
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_restore(
    pipe: DiffBIRPipeline, size: int, options: RestoreOptions, repeats: int = 1, warmup: bool = True
) -> dict[str, Any]:
    """s/image (best of `repeats` after one warm-up) and the peak memory of `restore`."""
    image = np.random.default_rng(0).integers(0, 256, (size // 4, size // 4, 3), dtype=np.uint8)
    options = replace(options, upscale=4.0, seed=0)
    if warmup:
        pipe.restore(image, options)  # warm-up: kernels, cuDNN autotune, text cache
    best, result = float("inf"), None
    for _ in range(repeats):
        _sync(pipe.device)
        start = time.perf_counter()
        result = pipe.restore(image, options)
        _sync(pipe.device)
        best = min(best, time.perf_counter() - start)
    assert result is not None
    return {
        "s_per_image": best,
        "ms_per_step": 1000 * result.timings["sampler"] / options.steps,
        "timings": result.timings,
        "peak_memory_gb": (result.peak_memory_bytes or 0) / GB,
    }


def time_batch(pipe: DiffBIRPipeline, size: int, options: RestoreOptions, batch: int) -> dict[str, Any]:
    images = [
        np.random.default_rng(i).integers(0, 256, (size // 4, size // 4, 3), dtype=np.uint8)
        for i in range(batch)
    ]
    opts = [replace(options, upscale=4.0, seed=i) for i in range(batch)]
    pipe.restore_batch(images, opts)  # warm-up at this batch size (cuDNN autotunes per shape)
    _sync(pipe.device)
    start = time.perf_counter()
    results = pipe.restore_batch(images, opts)
    _sync(pipe.device)
    elapsed = time.perf_counter() - start
    bad = [r for r in results if isinstance(r, Exception)]
    if bad:
        raise bad[0]
    peak = max((r.peak_memory_bytes or 0) for r in results)  # type: ignore[union-attr]
    return {"batch": batch, "images_per_s": batch / elapsed, "s_total": elapsed, "peak_memory_gb": peak / GB}


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device("cpu" if args.small else "cuda")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    size = 64 if args.small else 512
    steps, fast_steps, batch_steps = (10, 4, 4) if args.small else (50, 10, 20)
    configs = ["tiny", MID] if args.small else ["full"]
    out: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "size": size,
        "runs": {},
    }
    half = torch.float32 if args.small else torch.float16
    for cfg in configs:
        name = cfg if isinstance(cfg, str) else cfg.name
        log = out["runs"].setdefault(name, {})
        t0 = time.perf_counter()
        pipe = make_pipeline(cfg, device, half, channels_last=not args.small, compile=args.compile)
        log["build_s"] = time.perf_counter() - t0
        guided = RestoreOptions(steps=steps, sampler="spaced", fidelity=0.5, cfg_scale=4.0)
        log["spaced_guided_cfg"] = time_restore(pipe, size, guided, args.repeats)
        log["spaced_no_cfg"] = time_restore(
            pipe, size, replace(guided, fidelity=0.0, cfg_scale=1.0, prompt=""), args.repeats
        )
        log["dpmpp_fast"] = time_restore(
            pipe, size, replace(guided, steps=fast_steps, sampler="dpmpp", fidelity=0.0), args.repeats
        )
        print(json.dumps({name: {k: v for k, v in log.items() if k != "batches"}}, default=float), flush=True)
        log["batches"] = {}
        for use_cfg in (True, False):
            opts = RestoreOptions(
                steps=batch_steps, sampler="spaced", fidelity=0.0, cfg_scale=4.0 if use_cfg else 1.0
            )
            key = "cfg" if use_cfg else "no_cfg"
            log["batches"][key] = [time_batch(pipe, size, opts, b) for b in (1, 4, 8)]
            ones = log["batches"][key][0]["images_per_s"]
            for entry in log["batches"][key]:
                entry["speedup_vs_batch1"] = entry["images_per_s"] / ones
        print(json.dumps({name: {"batches": log["batches"]}}, default=float), flush=True)
        if not args.small and not args.skip_large:
            weights = sum(p.numel() * p.element_size() for m in pipe._unique_models() for p in m.parameters())
            tight = DiffBIRPipeline(
                pipe.models,
                pipe.stage1,
                version="v2",
                preset="full",
                device=device,
                max_pixels=None,
                memory_budget_bytes=int(12 * GB - weights - 2 * GB),
                channels_last=True,
            )
            big = RestoreOptions(steps=fast_steps, sampler="dpmpp", fidelity=0.5, cfg_scale=4.0)
            for side in (2048, 4096):
                torch.cuda.empty_cache()
                entry = time_restore(tight, side, big, 1, warmup=False)  # 512 px windows: already warm
                entry["plan"] = str(tight.plan((side // 4, side // 4), (side, side), "sr", 1, True))
                entry["steps"] = fast_steps
                log[f"tiled_{side}"] = entry
                print(json.dumps({name: {f"tiled_{side}": entry}}, default=float), flush=True)
            del tight
        del pipe
        if device.type == "cuda":
            torch.cuda.empty_cache()
        # Baseline: fp32, CFG as two forwards, no compile, no channels_last.
        base = make_pipeline(cfg, device, torch.float32, channels_last=False, compile=False, split_cfg=True)
        log["baseline_spaced_cfg"] = time_restore(base, size, replace(guided, fidelity=0.0), args.repeats)
        del base
        if device.type == "cuda":
            torch.cuda.empty_cache()
        opt = log["spaced_guided_cfg"]["s_per_image"]
        log["ratios"] = {
            "baseline_over_optimised_spaced_cfg": log["baseline_spaced_cfg"]["s_per_image"] / opt,
            "guided_cfg_over_no_cfg": opt / log["spaced_no_cfg"]["s_per_image"],
            "spaced50_over_dpmpp_fast": opt / log["dpmpp_fast"]["s_per_image"],
        }
        print(
            json.dumps(
                {name: {"baseline": log["baseline_spaced_cfg"], "ratios": log["ratios"]}}, default=float
            ),
            flush=True,
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON results")
    parser.add_argument("--small", action="store_true", help="CPU run with the tiny and mid configs")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet and ControlNet")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--skip-large", action="store_true", help="skip the 2048/4096 tiled runs")
    args = parser.parse_args()
    if not args.small and not torch.cuda.is_available():
        parser.error("no CUDA device: use --small for the CPU variant")
    torch.set_grad_enabled(False)
    started = time.perf_counter()
    results = run(args)
    results["wall_s"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=float))
    print(f"wrote {args.out} ({results['wall_s']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
