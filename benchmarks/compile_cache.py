"""Cold start of a compiled worker with and without saved compile artifacts, in new processes.

    python benchmarks/compile_cache.py --out benchmarks/results/compile-cache-cpu.json [--config tiny|mid]

Process 1 (a first replica): fresh, empty TORCHINDUCTOR_CACHE_DIR, no artifacts file: builds the model,
torch.compiles the UNet and ControlNet through `Accelerator` (`Acceleration(compile=True, compile_cache=F)`),
runs the denoiser at batches 2, 3, 4 (CFG rows and tile micro-batches) and 1, then saves the artifacts to F.
Process 2 (a new replica): another fresh, empty cache dir, loads F, runs the same calls. Reported: each
process's time from start to its last output, the part spent in the first calls, the ratio, inductor's cache
hits and misses, the graphs compiled after each batch size (dynamic batch: sizes 2, 3, 4 share one), and
whether the two processes' outputs are bit-identical. Works on CPU (inductor + the system C compiler) and
CUDA (`--device cuda`). Random weights: the numbers are about cost.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

STARTED = time.perf_counter()
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
BATCHES = (2, 3, 4, 1)


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One replica's cold start: build, compile (or load), run every batch size; outputs to `args.outputs`."""
    import torch
    from torch._dynamo.utils import counters

    from model.acceleration import Acceleration, Accelerator
    from model.cldm import Condition
    from model.config import get_preset
    from model.loading import build_cldm

    torch.set_grad_enabled(False)
    device = torch.device(args.device)
    if args.config == "mid":
        from sampler_bench import MID

        cfg = MID
    else:
        cfg = get_preset(args.config)
    torch.manual_seed(0)
    model = build_cldm(cfg, "sd", device=device).eval()
    settings = Acceleration(
        compile=True, compile_cache=args.cache_file, cuda_graphs=False, channels_last=False
    )
    accel = Accelerator({"sr": model}, {}, device, settings)
    ready = time.perf_counter()
    denoiser = accel.denoiser(model)
    lat = args.latent
    g = torch.Generator().manual_seed(1)
    text = model.text.encode(["a photo"])
    outputs, graphs, call_s = {}, {}, {}
    for b in BATCHES:
        x = torch.randn(b, 4, lat, lat, generator=g).to(device)
        cond = Condition(text.expand(b, -1, -1), torch.randn(b, 4, lat, lat, generator=g).to(device))
        t = torch.full((b,), 500, dtype=torch.long, device=device)
        start = time.perf_counter()
        outputs[f"batch{b}"] = denoiser(x, t, cond, 1.0).float().cpu()
        call_s[b] = time.perf_counter() - start
        graphs[b] = int(counters["stats"]["unique_graphs"])
    first_output_s = time.perf_counter() - STARTED
    compile_and_run_s = time.perf_counter() - ready
    saved = accel.save_compile_cache() if args.save else 0
    torch.save(outputs, args.outputs)
    return {
        "process_to_last_output_s": first_output_s,
        "compile_and_run_s": compile_and_run_s,
        "call_s": call_s,
        "unique_graphs_after_batch": graphs,
        "cache_loaded": accel.compile_cache_loaded,
        "saved_bytes": saved,
        "fxgraph_cache_hit": int(counters["inductor"]["fxgraph_cache_hit"]),
        "fxgraph_cache_miss": int(counters["inductor"]["fxgraph_cache_miss"]),
        "aotautograd_cache_hit": int(counters["aot_autograd"]["autograd_cache_hit"]),
    }


def spawn(args: argparse.Namespace, work: Path, name: str, save: bool) -> dict[str, Any]:
    """Run `child` in a new Python process with its own empty inductor cache dir."""
    cache_dir = work / f"inductor-{name}"
    cache_dir.mkdir()
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache_dir)}
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--config", args.config,
        "--device", args.device,
        "--latent", str(args.latent),
        "--cache-file", str(work / "artifacts.bin"),
        "--outputs", str(work / f"{name}.pt"),
    ] + (["--save"] if save else [])  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = wall
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny", choices=["tiny", "mid", "full"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--latent", type=int, default=8, help="latent side (cells) of the denoiser calls")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--save", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cache-file", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--outputs", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return 0
    import torch

    with tempfile.TemporaryDirectory(prefix="compile-cache-") as tmp:
        work = Path(tmp)
        cold = spawn(args, work, "cold", save=True)
        warm = spawn(args, work, "warm", save=False)
        a, b = torch.load(work / "cold.pt"), torch.load(work / "warm.pt")
        identical = all(torch.equal(a[k], b[k]) for k in a)
        max_diff = max((a[k] - b[k]).abs().max().item() for k in a)
    results = {
        "torch": torch.__version__,
        "config": args.config,
        "device": args.device,
        "latent": args.latent,
        "batches": list(BATCHES),
        "cold": cold,
        "warm_cache": warm,
        "cold_over_warm_process_wall": cold["process_wall_s"] / warm["process_wall_s"],
        "cold_over_warm_compile_and_run": cold["compile_and_run_s"] / warm["compile_and_run_s"],
        "outputs_identical": identical,
        "outputs_max_abs_diff": max_diff,
    }
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
