"""Quality of a RUNNING service: send an LQ set through the API (the Python client), score what comes back.

    python benchmarks/eval_service.py LQ_DIR --hq HQ_DIR -o OUT --url http://localhost:8000 \
        --task sr --upscale 4 --fidelity 0.5 --seed 0 [--api-key KEY] [--metrics psnr,ssim,niqe,...]

Writes the same results.csv / results.json / report.html as `python -m model eval`, with one configuration,
`service` (whatever precision, graphs, compile the workers run), timed end to end per image (upload, queue,
restore, download). Lives outside model/ because it needs client/, and model/ never imports it.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from client.client import RestoreClient
from model.quality import report
from model.quality.evaluate import summarize, write_results
from model.quality.images import list_images, pair_by_stem, read_rgb, write_png
from model.quality.scoring import Scorer
from model.quality.vocab import DEFAULT_METRICS


def evaluate_service(args: argparse.Namespace, client: Any) -> dict[str, Any]:
    """`client`: a RestoreClient, or anything with its `restore(path, timeout=, **params) -> bytes`."""
    pairs = pair_by_stem(list_images(args.lq_dir), list_images(args.hq) if args.hq else [])[: args.limit]
    scorer = Scorer(
        [m for m in args.metrics.split(",") if m],
        args.metric_device,
        args.metric_weights,
        args.allow_downloads,
        args.crop_border,
    )
    params = {
        "task": args.task,
        "upscale": args.upscale,
        "fidelity": args.fidelity,
        "steps": args.steps,
        "sampler": args.sampler,
        "seed": args.seed,
        "output_format": "png",
    }
    rows, lqs, hqs, outputs = [], {}, {}, {"service": {}}
    for lq_path, hq_path in pairs:
        started = time.perf_counter()
        data = client.restore(lq_path, timeout=args.timeout, **params)
        seconds = time.perf_counter() - started
        restored = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        stem = lq_path.stem
        lqs[stem] = read_rgb(lq_path)
        if hq_path is not None:
            hqs[stem] = read_rgb(hq_path)
        outputs["service"][stem] = restored
        write_png(args.output / "images" / "service" / f"{stem}.png", restored)
        row = {
            "config": "service",
            "image": stem,
            "fidelity": args.fidelity,
            "seed": args.seed,
            "seconds": seconds,
        }
        row.update(scorer.score(restored, hqs.get(stem)))
        rows.append(row)
        print(f"  {stem}: {seconds:.2f}s", file=sys.stderr)
    summary = summarize(rows, scorer.active, None)
    if args.hq and scorer.learned is not None and scorer.learned.has_fid:
        summary["fid"] = scorer.fid(args.output / "images" / "service", args.hq)
    knobs = {"precision": "as deployed", "cuda_graphs": None, "compile": None, "fast": False, "tiled": None}
    results = {
        "meta": {
            "lq_dir": str(args.lq_dir),
            "hq_dir": str(args.hq) if args.hq else None,
            "pipeline": {
                "preset": "service",
                "version": args.url,
                "task": args.task,
                "fidelity": args.fidelity,
                "steps": args.steps,
                "sampler": args.sampler,
                "seed": args.seed,
            },
            "device": "service",
            "device_name": args.url,
            "torch": "-",
            "crop_border": args.crop_border,
            "warmup": 0,
            "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "random_weights": False,
        },
        "metrics": scorer.active,
        "skipped_metrics": scorer.skipped,
        "configs": [
            {"name": "service", **knobs, "status": "ok", "reason": None, "load_s": None, "summary": summary}
        ],
        "rows": rows,
        "sweep": [],
    }
    args.output.mkdir(parents=True, exist_ok=True)
    write_results(args.output, results)
    report.write_report(args.output, results, lqs, hqs, outputs, args.crop)
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("lq_dir", type=Path)
    p.add_argument("--hq", type=Path, default=None)
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--url", default="http://localhost:8000")
    p.add_argument("--api-key", default=None)
    p.add_argument("--task", default="sr")
    p.add_argument("--upscale", type=float, default=None)
    p.add_argument("--fidelity", type=float, default=0.5)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--sampler", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--metrics", default=",".join(DEFAULT_METRICS))
    p.add_argument("--metric-weights", type=Path, default=None)
    p.add_argument("--metric-device", default="cpu")
    p.add_argument("--allow-downloads", action="store_true")
    p.add_argument("--crop-border", type=int, default=0)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per image")
    args = p.parse_args()
    with RestoreClient(args.url, args.api_key) as client:
        results = evaluate_service(args, client)
    s = results["configs"][0]["summary"]
    print(
        " ".join(
            f"{k}={report.fmt(v) if isinstance(v, float) and not math.isnan(v) else v}" for k, v in s.items()
        )
    )
    print(f"wrote {args.output / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
