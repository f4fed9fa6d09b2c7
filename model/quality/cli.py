"""`python -m model degrade` and `python -m model eval` (wired into model/cli.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_USER_ERROR = 2


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def add_degrade_parser(sub: argparse._SubParsersAction) -> None:
    from model.quality.vocab import DEGRADATION_PRESETS

    p = sub.add_parser("degrade", help="make LQ images from HQ ones with a synthetic degradation model")
    p.add_argument("hq_dir", type=Path, help="folder of HQ images")
    p.add_argument("-o", "--output", type=Path, required=True, help="LQ folder (<stem>.png + <stem>.json)")
    p.add_argument("--preset", choices=DEGRADATION_PRESETS, default="realesrgan")
    p.add_argument("--scale", type=int, default=4, help="LQ size = HQ size / scale (default 4)")
    p.add_argument("--seed", type=int, default=0, help="base seed; each image's seed = f(seed, file name)")


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    from model.quality.configs import DEFAULT_CONFIGS, KNOBS
    from model.quality.vocab import DEFAULT_METRICS

    p = sub.add_parser("eval", help="restore a set under several configurations; metrics, drift, HTML report")
    p.add_argument("lq_dir", type=Path, help="folder of LQ inputs")
    p.add_argument("--hq", type=Path, default=None, help="HQ folder, same stems (omit: no-reference only)")
    p.add_argument("-o", "--output", type=Path, required=True, help="results folder (report.html, csv, json)")
    p.add_argument(
        "--configs",
        default=",".join(DEFAULT_CONFIGS),
        help=f"comma list; each a '+' join of {', '.join(KNOBS)} (fp32 eager always runs as the baseline)",
    )
    p.add_argument("--metrics", default=",".join(DEFAULT_METRICS), help="comma list; pyiqa:<name> for others")
    p.add_argument(
        "--metric-weights", type=Path, default=None, help="metric weights folder (torch.hub layout)"
    )
    p.add_argument("--allow-downloads", action="store_true", help="let pyiqa fetch missing metric weights")
    p.add_argument("--metric-device", default=None, help="device for the learned metrics (default: --device)")
    p.add_argument("--fidelity-sweep", type=_floats, default=[], help="e.g. 0,0.25,0.5,0.75,1")
    p.add_argument("--crop-border", type=int, default=0, help="pixels cut off each side for PSNR/SSIM")
    p.add_argument("--crop", type=int, default=128, help="size of the report's per-image crops")
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    p.add_argument("--warmup", type=int, default=1, help="untimed restores per configuration first")
    p.add_argument("--preset", choices=["full", "tiny"], default="full", help="tiny = random weights (CI)")
    p.add_argument("--version", choices=["v1", "v2", "v2.1"], default="v2")
    p.add_argument("--weights-dir", type=Path, default=None, help="the official DiffBIR weight files")
    p.add_argument("--task", choices=["sr", "face", "denoise"], default="sr")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    p.add_argument("--upscale", type=float, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--sampler", choices=["spaced", "ddim", "dpmpp"], default=None)
    p.add_argument("--cfg", type=float, default=None)
    p.add_argument("--fidelity", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--color-fix", choices=["wavelet", "adain", "none"], default="wavelet")


def cmd_degrade(args: argparse.Namespace) -> int:
    from model.quality.degrade import degrade_folder

    try:
        written = degrade_folder(args.hq_dir, args.output, args.preset, args.seed, args.scale)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(f"wrote {len(written)} LQ images (+ parameters as JSON) to {args.output}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from model.quality.configs import parse_configs
    from model.quality.evaluate import EvalPlan, run_eval
    from model.quality.report import drift_table
    from model.quality.runner import PipelineSpec

    try:
        configs = parse_configs(_names(args.configs))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    spec = PipelineSpec(
        preset=args.preset,
        version=args.version,
        task=args.task,
        device=args.device,
        weights_dir=args.weights_dir,
        upscale=args.upscale,
        steps=args.steps,
        sampler=args.sampler,
        fidelity=args.fidelity,
        seed=args.seed,
        cfg_scale=args.cfg,
        color_fix=args.color_fix,
    )
    plan = EvalPlan(
        lq_dir=args.lq_dir,
        out_dir=args.output,
        spec=spec,
        hq_dir=args.hq,
        configs=configs,
        fidelity_sweep=args.fidelity_sweep,
        metrics=_names(args.metrics),
        metric_weights=args.metric_weights,
        allow_downloads=args.allow_downloads,
        metric_device=args.metric_device,
        crop_border=args.crop_border,
        warmup=args.warmup,
        limit=args.limit,
        crop=args.crop,
    )
    verbose = args.verbose
    try:
        results = run_eval(
            plan, progress=(lambda msg: print(f"  {msg}", file=sys.stderr)) if verbose else None
        )
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    for name, why in results["skipped_metrics"].items():
        print(f"skipped metric {name}: {why}")
    print(drift_table(results))
    print(f"wrote {args.output / 'report.html'}, results.csv, results.json")
    return 0
