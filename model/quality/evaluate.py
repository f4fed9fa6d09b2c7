"""`python -m model eval`: restore a set under every configuration, score it, and write the results.

For each configuration (baseline fp32 eager first) and each LQ image: the restored image
(`images/<config>/<stem>.png`), its timings, its metrics against the HQ image of the same stem (when an HQ
folder is given) and without reference, and its drift from the baseline's output for the same image and seed
(PSNR and max / mean uint8 level difference). Configurations that cannot run on the device are reported as
not applicable with the reason; one that fails is reported with its error. Optionally a fidelity sweep of
the baseline. Then `results.csv`, `results.json` and `report.html` (model/quality/report.py).
"""

from __future__ import annotations

import csv
import gc
import json
import logging
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.quality import metrics, report, runner
from model.quality.configs import BASELINE, RunConfig, not_applicable
from model.quality.images import list_images, pair_by_stem, read_rgb, write_png
from model.quality.scoring import Scorer

log = logging.getLogger(__name__)

STAGES = ("stage1", "vae_encode", "sampler", "vae_decode", "postprocess")
Progress = Callable[[str], None]


@dataclass
class EvalPlan:
    lq_dir: Path
    out_dir: Path
    spec: runner.PipelineSpec
    hq_dir: Path | None = None
    configs: list[RunConfig] = field(default_factory=lambda: [BASELINE])
    fidelity_sweep: list[float] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)
    metric_weights: Path | None = None
    allow_downloads: bool = False
    metric_device: str | None = None
    crop_border: int = 0
    warmup: int = 1
    limit: int | None = None
    crop: int = 128


@dataclass
class ConfigStatus:
    config: RunConfig
    status: str = "ok"  # ok | not applicable | failed
    reason: str | None = None
    load_s: float | None = None


def resolve_device(device: str | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def drift(output: np.ndarray, baseline: np.ndarray) -> dict[str, float]:
    max_level, mean_level = metrics.level_difference(output, baseline)
    return {
        "drift_psnr": metrics.psnr(output, baseline),
        "drift_max_level": max_level,
        "drift_mean_level": mean_level,
    }


def _mean(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None
    if all(math.isinf(v) for v in vals):
        return vals[0]
    finite = [v for v in vals if not math.isinf(v)]
    return float(np.mean(finite))


def summarize(
    rows: list[dict[str, Any]], metric_names: list[str], baseline_s: float | None
) -> dict[str, Any]:
    """Per-configuration means; drift PSNR: mean of the finite values (inf when all outputs are identical)."""
    seconds = _mean([r["seconds"] for r in rows])
    out: dict[str, Any] = {"images": len(rows), "s_per_image": seconds}
    out["speedup"] = baseline_s / seconds if baseline_s and seconds else None
    for name in metric_names:
        out[name] = _mean([r.get(name) for r in rows])
    if rows and "drift_psnr" in rows[0]:
        psnrs = [r["drift_psnr"] for r in rows]
        out["drift_psnr"] = _mean(psnrs)
        out["drift_psnr_min"] = min(psnrs)
        out["drift_max_level"] = max(r["drift_max_level"] for r in rows)
        out["drift_mean_level"] = float(np.mean([r["drift_mean_level"] for r in rows]))
    return out


def _row(config: str, stem: str, restored: Any, fidelity: float) -> dict[str, Any]:
    row: dict[str, Any] = {
        "config": config,
        "image": stem,
        "fidelity": fidelity,
        "seed": restored.seed,
        "steps": restored.steps,
        "seconds": restored.timings.get("total", math.nan),
    }
    for stage in STAGES:
        row[f"{stage}_s"] = restored.timings.get(stage, math.nan)
    if restored.peak_memory_bytes is not None:
        row["peak_memory_gb"] = restored.peak_memory_bytes / 2**30
    return row


def run_eval(plan: EvalPlan, progress: Progress | None = None) -> dict[str, Any]:
    """Everything the report shows, as one JSON-able dict; files written under `plan.out_dir`."""
    say = progress or (lambda msg: log.info("%s", msg))
    pairs = pair_by_stem(
        list_images(plan.lq_dir), list_images(plan.hq_dir) if plan.hq_dir is not None else []
    )[: plan.limit]
    if not pairs:
        raise FileNotFoundError(f"no images in {plan.lq_dir}")
    lqs = {lq.stem: read_rgb(lq) for lq, _ in pairs}
    hqs = {lq.stem: read_rgb(hq) for lq, hq in pairs if hq is not None}
    device = resolve_device(plan.spec.device)
    scorer = Scorer(
        plan.metrics,
        plan.metric_device or device,
        plan.metric_weights,
        plan.allow_downloads,
        plan.crop_border,
    )
    for name, why in scorer.skipped.items():
        say(f"metric {name}: skipped ({why})")
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    sweep: list[dict[str, Any]] = []
    statuses: list[ConfigStatus] = []
    outputs: dict[str, dict[str, np.ndarray]] = {}
    for config in plan.configs:
        status = ConfigStatus(config)
        statuses.append(status)
        reason = not_applicable(config, device)
        if reason:
            status.status, status.reason = "not applicable", reason
            say(f"{config.name}: not applicable ({reason})")
            continue
        started = time.perf_counter()
        try:
            pipe = runner.build(plan.spec, config)
            status.load_s = time.perf_counter() - started
            first = next(iter(lqs.values()))
            for _ in range(plan.warmup):  # CUDA graphs capture, compile, cuDNN autotune: not timed
                runner.restore(pipe, first, plan.spec, config)
            outputs[config.name] = {}
            for stem, lq in lqs.items():
                restored = runner.restore(pipe, lq, plan.spec, config)
                outputs[config.name][stem] = restored.image
                write_png(plan.out_dir / "images" / config.name / f"{stem}.png", restored.image)
                row = _row(config.name, stem, restored, plan.spec.fidelity)
                row.update(scorer.score(restored.image, hqs.get(stem)))
                if not config.is_baseline:
                    row.update(drift(restored.image, outputs[BASELINE.name][stem]))
                rows.append(row)
                say(f"{config.name}: {stem} {row['seconds']:.2f}s")
            if config.is_baseline and plan.fidelity_sweep:
                sweep = _sweep(plan, pipe, scorer, lqs, hqs, say)
        except Exception as exc:  # one configuration failing (OOM, compiler missing) must not end the run
            if config.is_baseline:
                raise
            status.status, status.reason = "failed", f"{type(exc).__name__}: {exc}"
            log.exception("configuration %s failed", config.name)
            say(f"{config.name}: failed ({status.reason})")
        finally:
            pipe = None
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    results = _assemble(plan, device, scorer, statuses, rows, sweep)
    write_results(plan.out_dir, results)
    report.write_report(plan.out_dir, results, lqs, hqs, outputs, plan.crop)
    return results


def _sweep(
    plan: EvalPlan,
    pipe: Any,
    scorer: Scorer,
    lqs: dict[str, np.ndarray],
    hqs: dict[str, np.ndarray],
    say: Progress,
) -> list[dict[str, Any]]:
    """The baseline at each fidelity: the fidelity/realness trade-off as numbers."""
    points = []
    for fidelity in plan.fidelity_sweep:
        per_image = []
        for stem, lq in lqs.items():
            restored = runner.restore(pipe, lq, plan.spec, BASELINE, fidelity)
            row = _row(f"fidelity={fidelity:g}", stem, restored, fidelity)
            row.update(scorer.score(restored.image, hqs.get(stem)))
            per_image.append(row)
        say(f"fidelity sweep: {fidelity:g}")
        points.append({"fidelity": fidelity, **summarize(per_image, scorer.active, None), "rows": per_image})
    return points


def _assemble(
    plan: EvalPlan,
    device: torch.device,
    scorer: Scorer,
    statuses: list[ConfigStatus],
    rows: list[dict[str, Any]],
    sweep: list[dict[str, Any]],
) -> dict[str, Any]:
    baseline_rows = [r for r in rows if r["config"] == BASELINE.name]
    baseline_s = _mean([r["seconds"] for r in baseline_rows])
    configs = []
    for st in statuses:
        entry: dict[str, Any] = {
            "name": st.config.name,
            **st.config.knobs(),
            "status": st.status,
            "reason": st.reason,
            "load_s": st.load_s,
        }
        if st.status == "ok":
            cfg_rows = [r for r in rows if r["config"] == st.config.name]
            entry["summary"] = summarize(cfg_rows, scorer.active, baseline_s)
            if plan.hq_dir is not None and scorer.learned is not None and scorer.learned.has_fid:
                entry["summary"]["fid"] = scorer.fid(plan.out_dir / "images" / st.config.name, plan.hq_dir)
        configs.append(entry)
    return {
        "meta": {
            "lq_dir": str(plan.lq_dir),
            "hq_dir": str(plan.hq_dir) if plan.hq_dir else None,
            "pipeline": runner.describe(plan.spec),
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "crop_border": plan.crop_border,
            "warmup": plan.warmup,
            "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "random_weights": plan.spec.preset == "tiny",
        },
        "metrics": scorer.active,
        "skipped_metrics": scorer.skipped,
        "configs": configs,
        "rows": rows,
        "sweep": sweep,
    }


def _jsonable(value: Any) -> Any:
    """inf/nan as strings: JSON has no literal for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def write_results(out_dir: Path, results: dict[str, Any]) -> None:
    (out_dir / "results.json").write_text(json.dumps(_jsonable(results), indent=1) + "\n")
    rows = results["rows"] + [r for point in results["sweep"] for r in point["rows"]]
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with (out_dir / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
