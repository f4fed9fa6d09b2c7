"""Round-2 legs of `benchmarks/gpu.py --round2`: real job sizes, cold start with a warm compile cache, and
the remaining speed levers, each with its output drift against fp32 eager on the same seed.

Legs (H200: full-size random weights, fp16; `--small`: the tiny config on the CPU, small sizes, fp32/bf16):
- `optimised`: torch.compile (dynamic batch, compile cache) + CUDA graphs + channels_last: 50 steps guided +
  CFG, 50 steps no CFG, 10-step fast mode (CFG), batch-8 throughput with and without CFG, and the time from
  process start to the first finished 512 job (a cold start WITHOUT any cache: the script's cache dir is new);
- `cold_start_warm_cache`: a NEW process, another empty inductor cache dir, loading the artifacts the first
  process saved: process start to the first finished 512 job;
- `real_job_1080p`: 480x270 input, x4 to 1920x1080, 50 steps guidance + CFG;
- `tiled_4096`: 4096x4096 output, 50 steps guidance + CFG under a 12 GB total budget, with peak memory; and
  tile batching at 2048x2048 (10 steps): windows batched vs one per forward, same run; the tiled VAE decode
  at 2048x2048 with its tiles waiting on the GPU vs in pinned host memory, same run;
- `levers`: fp32 eager reference, then each lever's time and drift (PSNR, max/mean uint8 level difference,
  `model/quality/metrics.py`): the optimised pipeline, SDPA backends (flash / mem-efficient / math), VAE
  decode fp16 channels_last, VAE decode compiled (fused GroupNorm+SiLU), torchao int8 / fp8 weight-only (when
  torchao imports), torch-tensorrt (when it imports; else the leg records why it was skipped), and one
  compilation per batch size against the symbolic batch axis.
Each leg records its error instead of ending the run, and legs that would start past `--budget-s` are
recorded as skipped, so the run always fits its slot.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import planning
from model.cldm import ControlLDM
from model.options import RestoreOptions
from model.pipeline import DiffBIRPipeline
from model.quality import metrics
from model.tiled_vae import decode_tiled_gn

GB = 1 << 30
STARTED = time.perf_counter()  # after the imports: `spawn_to_first_job_s` counts those too
FIRST_JOB_MARK = "first-job-done"


@dataclass(frozen=True)
class Sizes:
    """Sizes and step counts of one run: the H200 figures, or small ones for the CPU smoke run."""

    size: int  # square output of the 512 legs
    steps: int
    fast_steps: int
    batch: int
    real_in: tuple[int, int]  # (h, w) input of the real job, x4
    big: int  # square output of the large tiled job
    mid: int  # square output of the tile-batching comparison
    mid_steps: int


H200 = Sizes(512, 50, 10, 8, (270, 480), 4096, 2048, 10)
SMALL = Sizes(64, 4, 2, 2, (17, 30), 192, 128, 2)


def drift(output: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """The quality issue's drift measure: PSNR and max / mean uint8 level difference from the reference."""
    max_level, mean_level = metrics.level_difference(output, reference)
    return {
        "drift_psnr": metrics.psnr(output, reference),
        "drift_max_level": max_level,
        "drift_mean_level": mean_level,
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _image(hw: tuple[int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*hw, 3), dtype=np.uint8)


def timed_restore(
    pipe: DiffBIRPipeline, in_hw: tuple[int, int], options: RestoreOptions, runs: int = 1
) -> dict:
    """Seconds of each of `runs` restores (the first pays for new shapes), the image of the last, its peak."""
    image = _image(in_hw)
    times, result = [], None
    for _ in range(runs):
        _sync(pipe.device)
        start = time.perf_counter()
        result = pipe.restore(image, options)
        _sync(pipe.device)
        times.append(time.perf_counter() - start)
    assert result is not None
    return {
        "first_s": times[0],
        "s": min(times),
        "timings": result.timings,
        "peak_memory_gb": (result.peak_memory_bytes or 0) / GB,
        "output_hw": list(result.image.shape[:2]),
        "image": result.image,
    }


def _public(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if k != "image"}


class Legs:
    """Runs named legs in order: each one's figures or error into `out`, saved after each, within a budget."""

    def __init__(
        self,
        out: dict[str, Any],
        save: Callable[[], None],
        budget_s: float,
        only: Collection[str] | None = None,
    ) -> None:
        """`only`: run just the legs whose names start with one of these (None: all of them)."""
        self.out, self.save, self.budget_s, self.only = out, save, budget_s, only

    def selected(self, name: str) -> bool:
        return self.only is None or any(name.startswith(prefix) for prefix in self.only)

    def run(self, name: str, fn: Callable[[], dict[str, Any]], needs_s: float = 0.0) -> dict[str, Any] | None:
        if not self.selected(name):
            return None
        elapsed = time.perf_counter() - STARTED
        if elapsed + needs_s > self.budget_s:
            self.out[name] = {"skipped": f"time budget: {elapsed:.0f}s used, leg needs ~{needs_s:.0f}s"}
            self.save()
            return None
        start = time.perf_counter()
        try:
            result = fn()
        except Exception as exc:  # one leg failing must not lose the others' figures
            result = {"error": repr(exc)[:500], "traceback": traceback.format_exc()[-2000:]}
        result["leg_s"] = time.perf_counter() - start
        self.out[name] = result
        print(json.dumps({name: result}, default=float)[:3000], flush=True)
        self.save()
        return result


def run_round2(args: Any, out: dict[str, Any], save: Callable[[], None], make_pipeline: Callable) -> None:
    """All round-2 legs (see the module docstring) into `out["round2"]`."""
    small = args.small
    device = torch.device("cpu" if small else "cuda")
    sz = SMALL if small else H200
    cfg_name = "tiny" if small else "full"
    half = torch.float32 if small else torch.float16
    out.update(
        device=torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        torch=torch.__version__,
        config=cfg_name,
        sizes=sz.__dict__,
    )
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # TF32 stays off: the fp32 reference must be true fp32
    r2 = out.setdefault("round2", {})
    only = [leg.strip() for leg in args.legs.split(",") if leg.strip()] if args.legs else None
    legs = Legs(r2, save, args.budget_s, only)
    cache_file = Path(args.compile_cache or Path(tempfile.mkdtemp(prefix="diffbir-cc-")) / "artifacts.bin")
    r2["compile_cache_file"] = str(cache_file)
    r2["inductor_cache_dir"] = os.environ.get("TORCHINDUCTOR_CACHE_DIR", "(default)")
    lq = (sz.size // 4, sz.size // 4)
    guided = RestoreOptions(
        steps=sz.steps, sampler="spaced", fidelity=0.5, cfg_scale=4.0, upscale=4.0, seed=0
    )
    no_cfg = replace(guided, fidelity=0.0, cfg_scale=1.0, prompt="")
    fast = replace(guided, steps=sz.fast_steps, sampler="dpmpp", fidelity=0.0)
    accel = {"compile_sizes": [(sz.size, sz.size)], "compile_cache": str(cache_file)}
    state: dict[str, Any] = {}

    def optimised() -> dict[str, Any]:
        pipe = make_pipeline(cfg_name, device, half, channels_last=not small, compile=True, **accel)
        state["pipe"] = pipe
        first = timed_restore(pipe, lq, guided)  # compiles the CFG (batch >= 2) shape, captures graphs
        result: dict[str, Any] = {"process_start_to_first_job_s": time.perf_counter() - STARTED}
        result["first_job_s"] = first["first_s"]
        for key, opts in (("spaced_guided_cfg", guided), ("spaced_no_cfg", no_cfg), ("dpmpp_fast_cfg", fast)):
            entry = timed_restore(pipe, lq, opts, runs=1 + args.repeats)
            state[key] = entry["image"]
            if key == "spaced_guided_cfg":
                state["optimised_s"] = entry["s"]
            result[key] = _public(entry)
            result[key]["ms_per_step"] = 1000 * entry["timings"]["sampler"] / opts.steps
        for key, opts in (("batch_no_cfg", no_cfg), ("batch_cfg", replace(guided, fidelity=0.0))):
            images = [_image(lq, i) for i in range(sz.batch)]
            options = [replace(opts, seed=i) for i in range(sz.batch)]
            pipe.restore_batch(images, options)  # warm-up: graphs of this batch shape
            _sync(device)
            start = time.perf_counter()
            results = pipe.restore_batch(images, options)
            _sync(device)
            elapsed = time.perf_counter() - start
            bad = [r for r in results if isinstance(r, Exception)]
            if bad:
                raise bad[0]
            result[key] = {"batch": sz.batch, "steps": opts.steps, "images_per_s": sz.batch / elapsed}
        result["compile_cache_bytes"] = pipe.accel.save_compile_cache()
        return result

    legs.run("optimised", optimised)
    pipe: DiffBIRPipeline | None = state.get("pipe")
    size_legs = ("real_job_1080p", "tiled_4096", "tile_batching_2048")
    if (pipe is None or "spaced_guided_cfg" not in state) and any(map(legs.selected, size_legs)):
        # The optimised leg failed (or was not selected): the size legs still measure something, on the
        # uncompiled fp16 pipeline with CUDA graphs, and the JSON says so.
        pipe = make_pipeline(cfg_name, device, half, channels_last=not small, compile=False)
        r2["size_legs_pipeline"] = "fallback: fp16, channels_last, CUDA graphs, NOT compiled"
    else:
        r2["size_legs_pipeline"] = "optimised (compiled, CUDA graphs, channels_last)"
    legs.run("cold_start_warm_cache", lambda: cold_start(args, cache_file), needs_s=60 if not small else 0)

    def real_job() -> dict[str, Any]:
        assert pipe is not None, "the optimised leg failed"
        h, w = sz.real_in
        entry = timed_restore(pipe, (h, w), guided, runs=2)
        entry["plan"] = str(pipe.plan((h, w), (4 * h, 4 * w), "sr", 1, True))
        return _public(entry)

    legs.run("real_job_1080p", real_job, needs_s=20)

    def tight_pipeline() -> DiffBIRPipeline:
        assert pipe is not None, "the optimised leg failed"
        if small:
            budget = _small_tiling_budget(pipe, sz.big)
        else:
            weights = sum(p.numel() * p.element_size() for p in pipe.models["sr"].parameters())
            budget = int(12 * GB - weights - 2 * GB)
        tight = DiffBIRPipeline(
            pipe.models, pipe.stage1, version="v2", preset=pipe.preset, device=device, max_pixels=None,
            memory_budget_bytes=budget, min_short_edge=pipe.min_short_edge, tiles=pipe.tiles,
        )  # fmt: skip
        tight.accel = pipe.accel  # the same compiled twins and graph cache (windows are 512 px)
        return tight

    def tiled_big() -> dict[str, Any]:
        tight = tight_pipeline()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        entry = _public(timed_restore(tight, (sz.big // 4, sz.big // 4), guided))
        entry["plan"] = str(tight.plan((sz.big // 4,) * 2, (sz.big, sz.big), "sr", 1, True))
        entry["steps"] = guided.steps
        return entry

    legs.run("tiled_4096", tiled_big, needs_s=90 if not small else 0)

    def tile_batching() -> dict[str, Any]:
        tight = tight_pipeline()
        opts = replace(guided, steps=sz.mid_steps)
        in_hw = (sz.mid // 4, sz.mid // 4)
        batched = timed_restore(tight, in_hw, opts, runs=2)
        saved = planning.MAX_TILES_PER_FORWARD
        planning.MAX_TILES_PER_FORWARD = 1
        try:
            plan_seq = str(tight.plan(in_hw, (sz.mid, sz.mid), "sr", 1, True))
            sequential = timed_restore(tight, in_hw, opts, runs=2)
        finally:
            planning.MAX_TILES_PER_FORWARD = saved
        return {
            "size": sz.mid,
            "steps": opts.steps,
            "plan_batched": str(tight.plan(in_hw, (sz.mid, sz.mid), "sr", 1, True)),
            "plan_sequential": plan_seq,
            "batched_s": batched["s"],
            "sequential_s": sequential["s"],
            "sequential_over_batched": sequential["s"] / batched["s"],
            "batched_vs_sequential": drift(batched["image"], sequential["image"]),
        }

    legs.run("tile_batching_2048", tile_batching, needs_s=40 if not small else 0)

    def vae_waiting_room() -> dict[str, Any]:
        """The tiled VAE decode of a `mid`-sized latent, tiles waiting on the GPU (no limit) against all of
        them waiting in pinned host memory (keep_bytes=0), same run; the outputs must agree exactly."""
        assert pipe is not None
        vae = pipe.models["sr"].vae
        lat = sz.mid // 8
        z = torch.randn(1, 4, lat, lat, generator=torch.Generator().manual_seed(0)).to(device, half)
        tile = pipe.tiles.vae_decode
        times: dict[str, float] = {}
        images: dict[str, torch.Tensor] = {}
        for name, keep in (("on_device", None), ("host_pinned", 0)):
            decode_tiled_gn(vae, z, tile, keep_bytes=keep)  # warm-up
            _sync(device)
            start = time.perf_counter()
            images[name] = decode_tiled_gn(vae, z, tile, keep_bytes=keep)
            _sync(device)
            times[name] = time.perf_counter() - start
        return {
            "latent": lat,
            "tile": tile,
            "on_device_s": times["on_device"],
            "host_pinned_s": times["host_pinned"],
            "host_over_device": times["host_pinned"] / times["on_device"],
            "max_abs_diff": (images["on_device"] - images["host_pinned"]).abs().max().item(),
        }

    legs.run("tiled_vae_waiting_room", vae_waiting_room, needs_s=20 if not small else 0)
    levers(args, legs, state, make_pipeline, device, cfg_name, lq, guided)
    out["table"] = issue_table(r2, targets_apply=not small)
    save()


# The issue's targets: (figure, leg, path to the value, target, "max" = value must be at most the target).
TARGETS: list[tuple[str, str, tuple[str, ...], float, str]] = [
    ("50 steps, guidance + CFG, 512x512 (s)", "optimised", ("spaced_guided_cfg", "s"), 0.25, "max"),
    ("50 steps, no CFG (s)", "optimised", ("spaced_no_cfg", "s"), 0.15, "max"),
    ("10-step fast mode, CFG (s)", "optimised", ("dpmpp_fast_cfg", "s"), 0.08, "max"),
    ("batch-8 throughput, no CFG (img/s)", "optimised", ("batch_no_cfg", "images_per_s"), 10, "min"),
    ("batch-8 throughput, CFG (img/s)", "optimised", ("batch_cfg", "images_per_s"), 5, "min"),
    ("real job 480x270 -> 1920x1080, 50 steps, guidance + CFG (s)", "real_job_1080p", ("s",), 10, "max"),
    ("4096x4096 output, 50 steps (s)", "tiled_4096", ("s",), 60, "max"),
    ("4096x4096 output, peak memory (GB)", "tiled_4096", ("peak_memory_gb",), 12, "max"),
    # A new replica with the saved artifacts, from spawning the process (imports included) ...
    ("cold start, compile cache warm, spawn to first 512 job (s)", "cold_start_warm_cache",
     ("spawn_to_first_job_s",), 30, "max"),
    # ... and both processes counted from after their imports (the same base, for the ratio).
    ("cold start, compile cache warm, after imports (s)", "cold_start_warm_cache",
     ("process_start_to_first_job_s",), 0, "info"),
    ("cold start, no cache, after imports (s)", "optimised", ("process_start_to_first_job_s",), 0, "info"),
]  # fmt: skip


def issue_table(r2: dict[str, Any], targets_apply: bool = True) -> list[dict[str, Any]]:
    """The issue's table as rows: the figure, its target, what this run measured (None: leg failed or did
    not run). `targets_apply=False` (the CPU smoke run, other sizes): no target, `met` stays None."""
    rows = []
    for figure, leg, path, target, kind in TARGETS:
        value: Any = r2.get(leg)
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        met = None
        if isinstance(value, (int, float)) and kind != "info" and targets_apply:
            met = value <= target if kind == "max" else value >= target
        shown = target if kind != "info" and targets_apply else None
        rows.append({"figure": figure, "measured": value, "target": shown, "met": met})
    return rows


def _small_tiling_budget(pipe: DiffBIRPipeline, side: int) -> int:
    """CPU smoke run: the smallest power-of-two budget at which the latent tiles with 2+ windows a forward."""
    nets = pipe._net_sizes("sr")
    for exp in range(10, 40):
        plan = pipe.planner.plan((side // 4,) * 2, (side, side), nets, 1, True, 2**exp)
        if plan.latent is not None and plan.latent.batch > 1:
            return 2**exp
    raise RuntimeError("no budget tiles this size with batched windows")


def cold_start(args: Any, cache_file: Path) -> dict[str, Any]:
    """A new replica: a new process with an empty inductor cache dir, given the saved artifacts file."""
    if not cache_file.is_file():
        raise RuntimeError(f"no compile artifacts at {cache_file} (the optimised leg saved none)")
    with tempfile.TemporaryDirectory(prefix="inductor-new-replica-") as fresh:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": fresh, "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, __file__, "--cache-file", str(cache_file)] + (
            ["--small"] if args.small else []
        )
        start = time.perf_counter()
        # The child prints FIRST_JOB_MARK the moment its first job is done: spawn -> mark is the replica's
        # whole cold start (interpreter, imports, weights, compilation from the artifacts, the job).
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        spawn_to_first_job = None
        lines = []
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip() == FIRST_JOB_MARK and spawn_to_first_job is None:
                spawn_to_first_job = time.perf_counter() - start
            lines.append(line)
        code = proc.wait(timeout=600)
        wall = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"child failed ({code}): {''.join(lines)[-2000:]}")
    result = json.loads([line for line in lines if line.strip()][-1])
    result["spawn_to_first_job_s"] = spawn_to_first_job
    result["process_wall_s"] = wall
    return result


def cold_start_child(small: bool, cache_file: str) -> dict[str, Any]:
    """In the new process: build the optimised pipeline with the artifacts, time the first 512 job."""
    from gpu import make_pipeline  # the parent's builder (same nets, same settings)

    torch.set_grad_enabled(False)
    sz = SMALL if small else H200
    device = torch.device("cpu" if small else "cuda")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as in the parent process
    pipe = make_pipeline(
        "tiny" if small else "full",
        device,
        torch.float32 if small else torch.float16,
        channels_last=not small,
        compile=True,
        compile_sizes=[(sz.size, sz.size)],
        compile_cache=cache_file,
    )
    built = time.perf_counter() - STARTED
    options = RestoreOptions(
        steps=sz.steps, sampler="spaced", fidelity=0.5, cfg_scale=4.0, upscale=4.0, seed=0
    )
    timed_restore(pipe, (sz.size // 4, sz.size // 4), options)
    print(FIRST_JOB_MARK, flush=True)
    from torch._dynamo.utils import counters

    return {
        "process_start_to_first_job_s": time.perf_counter() - STARTED,
        "process_start_to_pipeline_built_s": built,
        "cache_loaded": pipe.accel.compile_cache_loaded,
        "fxgraph_cache_hit": int(counters["inductor"]["fxgraph_cache_hit"]),
        "fxgraph_cache_miss": int(counters["inductor"]["fxgraph_cache_miss"]),
    }


def levers(
    args: Any,
    legs: Legs,
    state: dict[str, Any],
    make_pipeline: Callable,
    device: torch.device,
    cfg_name: str,
    lq: tuple[int, int],
    guided: RestoreOptions,
) -> None:
    """fp32 eager reference, then each lever's time and drift from it (same input, same seed)."""
    small = args.small
    half = torch.bfloat16 if small else torch.float16  # CPU: bf16 stands in for fp16
    ref: dict[str, Any] = {}

    def reference() -> dict[str, Any]:
        base = make_pipeline(
            cfg_name, device, torch.float32, channels_last=False, compile=False, cuda_graphs=False
        )
        entry = timed_restore(base, lq, guided, runs=2)
        ref["image"], ref["pipe"] = entry["image"], base
        return _public(entry)

    legs.run("lever_reference_fp32_eager", reference, needs_s=15 if not small else 0)
    if "image" not in ref:
        return
    if "spaced_guided_cfg" in state:
        legs.run("lever_optimised", lambda: drift(state["spaced_guided_cfg"], ref["image"]))

    fp16: dict[str, Any] = {}

    def eager_half() -> dict[str, Any]:
        pipe = make_pipeline(
            cfg_name, device, half, channels_last=not small, compile=False, cuda_graphs=False
        )
        fp16["pipe"] = pipe
        entry = timed_restore(pipe, lq, guided, runs=2)
        return {**_public(entry), **drift(entry["image"], ref["image"]), "dtype": str(half)}

    legs.run("lever_half_eager", eager_half, needs_s=10 if not small else 0)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    for name, backend in (
        ("flash", SDPBackend.FLASH_ATTENTION),
        ("mem_efficient", SDPBackend.EFFICIENT_ATTENTION),
        ("math", SDPBackend.MATH),
    ):

        def attention(backend: SDPBackend = backend) -> dict[str, Any]:
            with sdpa_kernel([backend]):
                entry = timed_restore(fp16["pipe"], lq, guided, runs=2)
            return {**_public(entry), **drift(entry["image"], ref["image"])}

        legs.run(f"lever_attention_{name}", attention, needs_s=10 if not small else 0)
    legs.run("lever_vae_decode", lambda: vae_decode_levers(ref["pipe"], device, half, small), needs_s=30)
    for name in ("int8_weight_only", "float8_weight_only", "float8_dynamic"):
        legs.run(f"lever_torchao_{name}", lambda n=name: torchao_lever(n, fp16, lq, guided, ref), needs_s=30)
    legs.run("lever_torch_tensorrt", lambda: tensorrt_lever(fp16, lq, guided, ref), needs_s=60)

    def static_batch() -> dict[str, Any]:
        """One compilation per batch size instead of a symbolic batch axis: the steady-state time of the CFG
        job (batch 2), against the optimised (dynamic-batch) pipeline's in this run."""
        pipe = make_pipeline(
            cfg_name, device, half if not small else torch.float32, channels_last=not small, compile=True,
            compile_sizes=[(lq[0] * 4, lq[1] * 4)], compile_dynamic_batch=False,
        )  # fmt: skip
        entry = timed_restore(pipe, lq, guided, runs=3)
        result = {**_public(entry), **drift(entry["image"], ref["image"])}
        if "optimised_s" in state:
            result["dynamic_over_static"] = state["optimised_s"] / entry["s"]
        return result

    legs.run("lever_compile_static_batch", static_batch, needs_s=110 if not small else 0)


def vae_decode_levers(base: DiffBIRPipeline, device: torch.device, half: torch.dtype, small: bool) -> dict:
    """VAE decode alone: fp32 eager (reference), fp16 (CPU: bf16) channels_last, and that compiled (inductor
    fuses each GroupNorm with the SiLU after it); time per decode and drift of the decoded uint8 image."""
    vae32 = base.models["sr"].vae
    lat = 8 if small else 64
    z = torch.randn(1, 4, lat, lat, generator=torch.Generator().manual_seed(0)).to(device)

    def to_uint8(x: torch.Tensor) -> np.ndarray:
        return ((x.float().clamp(-1, 1) + 1) * 127.5).round().byte()[0].permute(1, 2, 0).cpu().numpy()

    def bench(fn: Callable[[torch.Tensor], torch.Tensor], n: int = 3) -> tuple[float, np.ndarray]:
        out = fn(z)  # warm-up (and compilation)
        _sync(device)
        start = time.perf_counter()
        for _ in range(n):
            out = fn(z)
        _sync(device)
        return (time.perf_counter() - start) / n, to_uint8(out)

    with torch.no_grad():
        t32, img32 = bench(vae32.decode)
        vae16 = copy.deepcopy(vae32).to(dtype=half, memory_format=torch.channels_last)
        t16, img16 = bench(vae16.decode)
        decoder = vae16.autoencoder.decoder
        vae16.autoencoder.decoder = torch.compile(decoder)
        t16c, img16c = bench(vae16.decode)
    return {
        "latent": lat,
        "fp32_eager_s": t32,
        "half_channels_last": {"s": t16, "speedup": t32 / t16, "dtype": str(half), **drift(img16, img32)},
        "half_channels_last_compiled_fused_gn_silu": {
            "s": t16c,
            "speedup": t32 / t16c,
            **drift(img16c, img32),
        },
    }


def torchao_lever(name: str, fp16: dict, lq: tuple[int, int], guided: RestoreOptions, ref: dict) -> dict:
    """torchao weight-only (int8 / fp8) or fp8 dynamic quantisation of the UNet's and ControlNet's linear
    layers, on a copy of the half eager pipeline; time against that pipeline in this run, drift vs fp32."""
    try:
        import torchao
        from torchao import quantization as q
    except Exception as exc:  # optional: torchao is not a dependency of the service
        return {"skipped": f"torchao not importable: {exc!r}"[:300]}
    configs = {
        "int8_weight_only": "Int8WeightOnlyConfig",
        "float8_weight_only": "Float8WeightOnlyConfig",
        "float8_dynamic": "Float8DynamicActivationFloat8WeightConfig",
    }
    config_cls = getattr(q, configs[name], None)
    if config_cls is None:
        return {"skipped": f"torchao {torchao.__version__} has no {configs[name]}"}
    base: DiffBIRPipeline = fp16["pipe"]
    model = copy.deepcopy(base.models["sr"])
    for net in (model.unet, model.controlnet):
        q.quantize_(net, config_cls())
    pipe = DiffBIRPipeline(
        {"sr": model}, base.stage1, version="v2", preset=base.preset, device=base.device, max_pixels=None,
        min_short_edge=base.min_short_edge, tiles=base.tiles, acceleration=base.accel.settings,
    )  # fmt: skip
    entry = timed_restore(pipe, lq, guided, runs=2)
    plain = timed_restore(base, lq, guided, runs=2)
    return {
        **_public(entry),
        "torchao": torchao.__version__,
        "half_eager_s_same_run": plain["s"],
        "speedup_vs_half_eager": plain["s"] / entry["s"],
        **drift(entry["image"], ref["image"]),
    }


def tensorrt_lever(fp16: dict, lq: tuple[int, int], guided: RestoreOptions, ref: dict) -> dict:
    """The UNet and ControlNet through torch-tensorrt's torch.compile backend (fp16), when it imports."""
    try:
        import torch_tensorrt
    except Exception as exc:  # optional: a multi-GB install the service does not need
        return {"skipped": f"torch_tensorrt not importable: {exc!r}"[:300]}
    base: DiffBIRPipeline = fp16["pipe"]
    if base.device.type != "cuda":
        return {"skipped": "TensorRT needs a CUDA device"}
    m = base.models["sr"]
    options = {"enabled_precisions": {torch.float16}, "use_python_runtime": False}

    def trt(net: torch.nn.Module) -> Any:
        return torch.compile(net, backend="tensorrt", options=options, dynamic=False)

    model = ControlLDM(m.cfg, m.diffusion, trt(m.unet), trt(m.controlnet), m.vae, m.text)
    pipe = DiffBIRPipeline(
        {"sr": model}, base.stage1, version="v2", preset=base.preset, device=base.device, max_pixels=None,
        min_short_edge=base.min_short_edge, tiles=base.tiles, acceleration=base.accel.settings,
    )  # fmt: skip
    entry = timed_restore(pipe, lq, guided, runs=2)
    return {
        **_public(entry),
        "torch_tensorrt": torch_tensorrt.__version__,
        "speedup_vs_half_eager": timed_restore(base, lq, guided)["s"] / entry["s"],
        **drift(entry["image"], ref["image"]),
    }


if __name__ == "__main__":  # the cold-start child process (see `cold_start`)
    import argparse

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    parser = argparse.ArgumentParser()
    parser.add_argument("--cache-file", required=True)
    parser.add_argument("--small", action="store_true")
    cli = parser.parse_args()
    print(json.dumps(cold_start_child(cli.small, cli.cache_file)))
