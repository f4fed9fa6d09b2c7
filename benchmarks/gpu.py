"""Stage-2 speed and memory on one GPU with full-size RANDOM weights (no downloads): one prepared script.

    python benchmarks/gpu.py --out results.json          # H100/H200, well under 8 minutes incl. warm-up
    python benchmarks/gpu.py --small --out small.json    # CPU: tiny/mid configs, batching and overhead ratios
    python benchmarks/gpu.py --round2 --out r2.json      # round 2 (gpu_round2.py); scripts/gpu_round2.sh
    python benchmarks/gpu.py --round2 --small --out r2-cpu.json   # the same legs as a CPU smoke run

Measures (s/image through `DiffBIRPipeline.restore`, 512x512 output from a 128x128 input, sr x4):
- 50-step spaced DDPM with guidance (fidelity 0.5) + CFG 4; 50-step without CFG (empty prompt, cfg 1);
  10-step DPM-Solver++ (fast mode);
- batch 1/4/8 (`restore_batch`, 20 steps) images/s with and without CFG;
- 2048x2048 and 4096x4096 outputs under a 12 GB total budget (tiled automatically), with peak memory;
- a baseline in the same run: fp32, CFG as two forwards, no compile, no channels_last, no CUDA graphs -- and
  the ratios; plus the optimised settings without CUDA graphs, and how far graphed outputs are from eager ones
  (same seed: should be 0 or a few uint8 levels);
- with --compile-leg, last: torch.compile (default mode) under the CUDA graphs, with its warm-up time.
Results are written after every section, so a run cut short still leaves what it measured.
Random weights give meaningless images; the timings are those of the real nets (same shapes and kernels).
Only torch, diffusers, open_clip, spandrel, safetensors, numpy and pillow are needed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sampler_bench import MID  # the same mid config as the CPU loop benchmark

from model.acceleration import Acceleration
from model.config import Stage2Config, get_preset
from model.loading import build_cldm
from model.options import RestoreOptions, Stage2Settings
from model.pipeline import DiffBIRPipeline
from model.planning import FULL_TILES, TINY_TILES
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
    cuda_graphs: bool | None = None,
    **acceleration: Any,
) -> DiffBIRPipeline:
    """The benchmark's pipeline: random weights of `cfg` with a BSRNet stage 1; `acceleration`: more
    `Acceleration` fields (compile_sizes, compile_cache, compile_dynamic_batch)."""
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
        acceleration=Acceleration(
            compile=compile, cuda_graphs=cuda_graphs, channels_last=channels_last, **acceleration
        ),
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _input(size: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (size // 4, size // 4, 3), dtype=np.uint8)


def time_restore(
    pipe: DiffBIRPipeline, size: int, options: RestoreOptions, repeats: int = 1, warmup: bool = True
) -> dict[str, Any]:
    """s/image (best of `repeats` after two warm-ups) and the peak memory of `restore`."""
    image = _input(size)
    options = replace(options, upscale=4.0, seed=0)
    first = None
    if warmup:
        # Warm-ups: kernels, cuDNN autotune, text cache; CUDA graphs of the denoiser at the first, of
        # stage 1 and the VAE at the second (they wait for a shape's second request).
        _sync(pipe.device)
        start = time.perf_counter()
        pipe.restore(image, options)
        _sync(pipe.device)
        first = time.perf_counter() - start
        pipe.restore(image, options)
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
        "first_call_s": first,
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
    for _ in range(2):  # warm-ups at this batch size (cuDNN autotunes per shape; graphs per shape)
        pipe.restore_batch(images, opts)
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


def _sibling(pipe: DiffBIRPipeline, cuda_graphs: bool | None = None, **kwargs: Any) -> DiffBIRPipeline:
    """Another pipeline over the same loaded nets (other budget, graphs on or off)."""
    args: dict[str, Any] = {
        "version": "v2",
        "preset": pipe.preset,
        "device": pipe.device,
        "max_pixels": None,
        "min_short_edge": pipe.min_short_edge,
        "tiles": pipe.tiles,
        # channels_last: already converted in place (or not) by `pipe`
        "acceleration": Acceleration(cuda_graphs=cuda_graphs, channels_last=False),
        **kwargs,
    }
    return DiffBIRPipeline(pipe.models, pipe.stage1, **args)


def compare(a: DiffBIRPipeline, b: DiffBIRPipeline, size: int, options: RestoreOptions) -> dict[str, float]:
    """uint8 difference between two pipelines' outputs for the same input and seed."""
    opts = replace(options, upscale=4.0, seed=0)
    x = a.restore(_input(size), opts).image.astype(np.int16)
    y = b.restore(_input(size), opts).image.astype(np.int16)
    diff = np.abs(x - y)
    return {"max_abs_uint8": int(diff.max()), "mean_abs_uint8": float(diff.mean())}


def graph_stats(pipe: DiffBIRPipeline) -> dict[str, Any] | None:
    if pipe.graphs is None:
        return None
    return {**dataclasses.asdict(pipe.graphs.stats), "graphs": pipe.graphs.num_graphs}


def profile_denoiser(pipe: DiffBIRPipeline, size: int, calls: int = 5) -> dict[str, Any]:
    """GPU time and kernel count of one eager UNet+ControlNet call at CFG batch 2: the floor a graph replay
    approaches, and the top kernels by GPU time."""
    from torch.profiler import ProfilerActivity, profile

    from model.cldm import Condition

    model = pipe.models["sr"]
    lat = size // 8
    x = torch.randn(2, 4, lat, lat, device=pipe.device)
    t = torch.full((2,), 500, dtype=torch.long, device=pipe.device)
    cond = Condition(
        model.text.encode([""]).expand(2, -1, -1), torch.randn(2, 4, lat, lat, device=pipe.device)
    )
    for _ in range(3):
        model(x, t, cond, 1.0)
    _sync(pipe.device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            model(x, t, cond, 1.0)
        _sync(pipe.device)
    events = prof.key_averages()

    def gpu_us(e: Any) -> float:
        return float(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0)))

    kernels = [e for e in events if gpu_us(e) > 0]
    return {
        "gpu_ms_per_call": sum(gpu_us(e) for e in kernels) / 1000 / calls,
        "kernel_launches_per_call": sum(e.count for e in kernels) / calls,
        "top": [
            {"name": e.key[:90], "ms_per_call": gpu_us(e) / 1000 / calls, "count": e.count / calls}
            for e in sorted(kernels, key=gpu_us, reverse=True)[:20]
        ],
    }


def run(args: argparse.Namespace, out: dict[str, Any], save: Callable[[], None]) -> None:
    device = torch.device("cpu" if args.small else "cuda")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    size = 64 if args.small else 512
    steps, fast_steps, batch_steps = (10, 4, 4) if args.small else (50, 10, 50)
    configs = ["tiny", MID] if args.small else ["full"]
    out.update(
        device=torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
        torch=torch.__version__,
        size=size,
        runs={},
    )
    half = torch.float32 if args.small else torch.float16
    for cfg in [] if args.compile_leg_only else configs:
        name = cfg if isinstance(cfg, str) else cfg.name
        log = out["runs"].setdefault(name, {})
        t0 = time.perf_counter()
        pipe = make_pipeline(cfg, device, half, channels_last=not args.small, compile=args.compile)
        log["build_s"] = time.perf_counter() - t0
        log["cuda_graphs"] = pipe.graphs is not None
        guided = RestoreOptions(steps=steps, sampler="spaced", fidelity=0.5, cfg_scale=4.0)
        fast = replace(guided, steps=fast_steps, sampler="dpmpp", fidelity=0.0)
        no_cfg = replace(guided, fidelity=0.0, cfg_scale=1.0, prompt="")
        log["spaced_guided_cfg"] = time_restore(pipe, size, guided, args.repeats)
        log["spaced_no_cfg"] = time_restore(pipe, size, no_cfg, args.repeats)
        log["dpmpp_fast"] = time_restore(pipe, size, fast, args.repeats)
        log["dpmpp_fast_guided_cfg"] = time_restore(pipe, size, replace(fast, fidelity=0.5), args.repeats)
        print(json.dumps({name: {k: v for k, v in log.items()}}, default=float), flush=True)
        save()
        if device.type == "cuda":
            try:
                log["profile_denoiser_cfg"] = profile_denoiser(pipe, size)
            except Exception as exc:  # the profiler is a diagnostic: never lose the run for it
                log["profile_denoiser_cfg"] = {"error": repr(exc)}
            print(json.dumps({name: {"profile_denoiser_cfg": log["profile_denoiser_cfg"]}}), flush=True)
            save()
        if pipe.graphs is not None:
            eager = _sibling(pipe, cuda_graphs=False)
            log["eager"] = {
                "spaced_guided_cfg": time_restore(eager, size, guided, args.repeats),
                "spaced_no_cfg": time_restore(eager, size, no_cfg, args.repeats),
                "dpmpp_fast": time_restore(eager, size, fast, args.repeats),
            }
            log["graphed_vs_eager"] = {
                "spaced_guided_cfg": compare(pipe, eager, size, guided),
                "dpmpp_fast": compare(pipe, eager, size, fast),
            }
            del eager
            print(json.dumps({name: {k: log[k] for k in ("eager", "graphed_vs_eager")}}), flush=True)
            save()
        # Baseline: fp32, CFG as two forwards, no compile, no channels_last, no CUDA graphs.
        base = make_pipeline(
            cfg, device, torch.float32, channels_last=False, compile=False, split_cfg=True, cuda_graphs=False
        )
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
        if "eager" in log:
            for key in ("spaced_guided_cfg", "spaced_no_cfg", "dpmpp_fast"):
                log["ratios"][f"eager_over_graphed_{key}"] = (
                    log["eager"][key]["s_per_image"] / log[key]["s_per_image"]
                )
        print(
            json.dumps(
                {name: {"baseline": log["baseline_spaced_cfg"], "ratios": log["ratios"]}}, default=float
            ),
            flush=True,
        )
        save()
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
                entry["steps"] = batch_steps
        print(json.dumps({name: {"batches": log["batches"]}}, default=float), flush=True)
        save()
        if not args.small and not args.skip_large:
            models = {id(m): m for m in pipe.models.values()}.values()
            weights = sum(p.numel() * p.element_size() for m in models for p in m.parameters())
            tight = _sibling(pipe, memory_budget_bytes=int(12 * GB - weights - 2 * GB))
            big = RestoreOptions(steps=fast_steps, sampler="dpmpp", fidelity=0.5, cfg_scale=4.0)
            for side in (2048, 4096):
                torch.cuda.empty_cache()
                entry = time_restore(tight, side, big, 1, warmup=False)  # 512 px windows: already warm
                entry["plan"] = str(tight.plan((side // 4, side // 4), (side, side), "sr", 1, True))
                entry["steps"] = fast_steps
                log[f"tiled_{side}"] = entry
                print(json.dumps({name: {f"tiled_{side}": entry}}, default=float), flush=True)
                save()
            del tight
        log["graphs"] = graph_stats(pipe)
        del pipe
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if (args.compile_leg or args.compile_leg_only) and not args.small:
        compile_leg(out, save, device, size, steps, fast_steps, batch_steps, args.repeats)


def compile_leg(
    out: dict[str, Any],
    save: Callable[[], None],
    device: torch.device,
    size: int,
    steps: int,
    fast_steps: int,
    batch_steps: int,
    repeats: int,
) -> None:
    """torch.compile (default mode: fused kernels) inside the same CUDA graphs, against graphs alone in this
    run. Every new batch shape compiles once (about a minute each on 16 cores): `first_call_s` shows it."""
    leg = out["runs"].setdefault("full_compiled", {})
    guided = RestoreOptions(steps=steps, sampler="spaced", fidelity=0.5, cfg_scale=4.0)
    no_cfg = replace(guided, fidelity=0.0, cfg_scale=1.0, prompt="")
    ref = make_pipeline("full", device, torch.float16, channels_last=True, compile=False)
    leg["graphs_only_spaced_guided_cfg"] = time_restore(ref, size, guided, repeats)
    leg["graphs_only_spaced_no_cfg"] = time_restore(ref, size, no_cfg, repeats)
    del ref
    torch.cuda.empty_cache()
    pipe = make_pipeline("full", device, torch.float16, channels_last=True, compile=True)
    cases = {
        "spaced_guided_cfg": guided,  # CFG: batch-2 shape
        "dpmpp_fast_guided_cfg": replace(guided, steps=fast_steps, sampler="dpmpp"),
        "spaced_no_cfg": no_cfg,  # batch-1 shape
        "dpmpp_fast_no_cfg": replace(no_cfg, steps=fast_steps, sampler="dpmpp"),
    }
    for key, options in cases.items():
        leg[key] = time_restore(pipe, size, options, repeats)
        print(json.dumps({"full_compiled": {key: leg[key]}}, default=float), flush=True)
        save()
    leg["ratios"] = {
        f"graphs_only_over_compiled_{k}": leg[f"graphs_only_{k}"]["s_per_image"] / leg[k]["s_per_image"]
        for k in ("spaced_guided_cfg", "spaced_no_cfg")
    }
    save()
    leg["batches"] = {}
    # Shapes already compiled come first, so a run cut short still has the cheap ones.
    for key, cfg_scale, sizes in (("no_cfg", 1.0, (1, 4, 8)), ("cfg", 4.0, (1, 4, 8))):
        opts = RestoreOptions(steps=batch_steps, sampler="spaced", fidelity=0.0, cfg_scale=cfg_scale)
        entries = leg["batches"][key] = []
        for b in sizes:
            entries.append({**time_batch(pipe, size, opts, b), "steps": batch_steps})
            entries[-1]["speedup_vs_batch1"] = entries[-1]["images_per_s"] / entries[0]["images_per_s"]
            print(json.dumps({"full_compiled": {key: entries[-1]}}, default=float), flush=True)
            save()
    leg["graphs"] = graph_stats(pipe)
    save()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON results")
    parser.add_argument("--small", action="store_true", help="CPU run with the tiny and mid configs")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet and ControlNet")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--skip-large", action="store_true", help="skip the 2048/4096 tiled runs")
    parser.add_argument(
        "--compile-leg", action="store_true", help="last: torch.compile + CUDA graphs (compiles for minutes)"
    )
    parser.add_argument("--compile-leg-only", action="store_true", help="only the torch.compile leg")
    parser.add_argument(
        "--round2",
        action="store_true",
        help="only the round-2 legs (benchmarks/gpu_round2.py): real jobs, cold start, levers with drift",
    )
    parser.add_argument("--budget-s", type=float, default=540, help="round 2: skip legs that would end later")
    parser.add_argument(
        "--compile-cache", default=None, help="round 2: compile artifacts file (default: temp)"
    )
    parser.add_argument(
        "--legs", default=None, help="round 2: comma-separated leg-name prefixes to run (default: all)"
    )
    args = parser.parse_args()
    if not args.small and not torch.cuda.is_available():
        parser.error("no CUDA device: use --small for the CPU variant")
    torch.set_grad_enabled(False)
    started = time.perf_counter()
    results: dict[str, Any] = {}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        results["wall_s"] = time.perf_counter() - started
        args.out.write_text(json.dumps(results, indent=2, default=float))

    if args.round2:
        from gpu_round2 import run_round2

        run_round2(args, results, save, make_pipeline)
    else:
        run(args, results, save)
    save()
    print(f"wrote {args.out} ({results['wall_s']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
