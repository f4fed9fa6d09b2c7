"""The HTML report of an evaluation: one file plus a `crops/` folder beside it; plots are inline SVG.

Sections: what ran (and which metrics / configurations could not, with why), the drift table (each
configuration against the fp32 eager output of the same image and seed), mean metrics per configuration,
the fidelity sweep, speed vs quality, and per image the same crop of LQ / every configuration / HQ.
"""

from __future__ import annotations

import html
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from model.quality.images import write_png
from model.quality.vocab import LOWER_IS_BETTER

PLOT_CAP_DB = 100.0  # identical outputs have infinite PSNR; plotted at this value


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf (identical)" if value > 0 else "-inf"
        if math.isnan(value):
            return "nan"
        return f"{value:.{digits}g}"
    return str(value)


def _label(metric: str) -> str:
    """Column name with the direction that is better."""
    return f"{metric} {'↓' if metric in LOWER_IS_BETTER else '↑'}"


def _e(value: Any) -> str:
    return html.escape(str(value))


def _cell(value: Any) -> str:
    """Numbers right-aligned, text left."""
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    return f"<td class='{'num' if numeric else 'txt'}'>{_e(fmt(value))}</td>"


def _table(header: list[str], rows: list[list[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    svg = buf.getvalue()
    return svg[svg.index("<svg") :]


def _plot_sweep(sweep: list[dict[str, Any]], metric_names: list[str]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [m for m in ("psnr", "lpips", "ssim", "maniqa", "musiq", "niqe") if m in metric_names][:2]
    if not shown or not sweep:
        return "<p>No metric to plot against fidelity (needs an HQ folder or a no-reference metric).</p>"
    xs = [p["fidelity"] for p in sweep]
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    ax.plot(xs, [p.get(shown[0]) for p in sweep], "o-", color="tab:blue")
    ax.set_xlabel("fidelity")
    ax.set_ylabel(shown[0], color="tab:blue")
    if len(shown) > 1:
        ax2 = ax.twinx()
        ax2.plot(xs, [p.get(shown[1]) for p in sweep], "s--", color="tab:red")
        ax2.set_ylabel(shown[1], color="tab:red")
    ax.set_title("fidelity sweep (baseline)")
    svg = _svg(fig)
    plt.close(fig)
    return svg


def _plot_speed(configs: list[dict[str, Any]], has_reference: bool) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key, label = ("psnr", "PSNR vs HQ (dB)") if has_reference else ("drift_psnr", "PSNR vs fp32 eager (dB)")
    points = []
    for c in configs:
        if c["status"] != "ok":
            continue
        s = c["summary"]
        y = s.get(key)
        if key == "drift_psnr" and y is None:
            y = math.inf  # the baseline itself
        if y is None or s.get("s_per_image") is None:
            continue
        points.append((c["name"], s["s_per_image"], min(y, PLOT_CAP_DB)))
    if not points:
        return "<p>Nothing to plot.</p>"
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for name, x, y in points:
        ax.scatter([x], [y])
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("seconds per image")
    ax.set_ylabel(label + (f", identical = {PLOT_CAP_DB:g}" if key == "drift_psnr" else ""))
    ax.set_title("speed vs quality per configuration")
    svg = _svg(fig)
    plt.close(fig)
    return svg


def _crop_box(h: int, w: int, size: int) -> tuple[int, int, int, int]:
    ch, cw = min(size, h), min(size, w)
    top, left = (h - ch) // 2, (w - cw) // 2
    return top, left, ch, cw


def save_crops(
    out_dir: Path,
    lqs: dict[str, np.ndarray],
    hqs: dict[str, np.ndarray],
    outputs: dict[str, dict[str, np.ndarray]],
    size: int,
) -> dict[str, list[tuple[str, str]]]:
    """Per image: (label, relative path) of the same centre crop of LQ (nearest-upscaled), outputs and HQ."""
    crops: dict[str, list[tuple[str, str]]] = {}
    for stem, lq in lqs.items():
        done = [imgs[stem] for imgs in outputs.values() if stem in imgs]
        if not done:
            continue
        h, w = done[0].shape[:2]
        top, left, ch, cw = _crop_box(h, w, size)
        rows, cols = slice(top, top + ch), slice(left, left + cw)

        items: list[tuple[str, np.ndarray]] = [
            (
                "LQ (input)",
                np.asarray(Image.fromarray(lq).resize((w, h), Image.Resampling.NEAREST))[rows, cols],
            )
        ]
        items += [(name, imgs[stem][rows, cols]) for name, imgs in outputs.items() if stem in imgs]
        if stem in hqs and hqs[stem].shape[0] >= top + ch and hqs[stem].shape[1] >= left + cw:
            items.append(("HQ (reference)", hqs[stem][rows, cols]))
        crops[stem] = []
        for i, (label, img) in enumerate(items):
            rel = f"crops/{stem}/{i:02d}.png"
            write_png(out_dir / rel, np.ascontiguousarray(img))
            crops[stem].append((label, rel))
    return crops


STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}
th{background:#f2f2f2} td.num{text-align:right}
.warn{background:#fff3cd;border:1px solid #e0c36b;padding:0.6em 1em}
figure{display:inline-block;margin:4px;text-align:center;font-size:12px}
figure img{width:160px;height:160px;image-rendering:pixelated;border:1px solid #999}
.plots svg{max-width:560px;height:auto;margin-right:1em}
"""


def _options(p: dict[str, Any]) -> str:
    """The restore options; those left to the version's official default say so."""
    official = "the version's default"
    steps = p["steps"] if p["steps"] is not None else official
    sampler = p["sampler"] if p["sampler"] is not None else official
    return f"fidelity {p['fidelity']}, steps {steps}, sampler {sampler}, seed {p['seed']}"


def render(results: dict[str, Any], crops: dict[str, list[tuple[str, str]]]) -> str:
    meta, configs = results["meta"], results["configs"]
    names = results["metrics"]
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>DiffBIR evaluation</title><style>{STYLE}"
    ]
    parts.append("</style></head><body><h1>DiffBIR restoration quality</h1>")
    if meta.get("random_weights"):
        parts.append(
            "<p class='warn'>Preset <b>tiny</b>: RANDOM weights. The images are not restorations; only the "
            "drift table (how far each configuration moves the same computation) is meaningful.</p>"
        )
    p = meta["pipeline"]
    parts.append(
        _table(
            ["setting", "value"],
            [
                ["LQ folder", meta["lq_dir"]],
                ["HQ folder", meta["hq_dir"] or "none (no-reference metrics only)"],
                ["model", f"{p['preset']} {p['version']} task {p['task']}"],
                ["options", _options(p)],
                ["device", f"{meta['device']} ({meta['device_name']}), torch {meta['torch']}"],
                ["created", meta["created"]],
            ],
        )
    )
    if results["skipped_metrics"]:
        parts.append("<h2>Metrics skipped</h2>")
        parts.append(_table(["metric", "reason"], [[k, v] for k, v in results["skipped_metrics"].items()]))
    parts.append("<h2>Configurations</h2>")
    parts.append(
        _table(
            [
                "configuration",
                "precision",
                "CUDA graphs",
                "compile",
                "fast",
                "tiled",
                "status",
                "reason",
                "load s",
            ],
            [
                [
                    c["name"],
                    c["precision"],
                    c["cuda_graphs"],
                    c["compile"],
                    c["fast"],
                    c["tiled"],
                    c["status"],
                    c["reason"] or "",
                    c["load_s"],
                ]
                for c in configs
            ],
        )
    )
    parts.append("<h2>Drift from fp32 eager (same image, same seed)</h2>")
    parts.append(_markdown_table_to_html(drift_table(results)))
    ok = [c for c in configs if c["status"] == "ok"]
    metric_cols = names + (["fid"] if any("fid" in c["summary"] for c in ok) else [])
    parts.append("<h2>Mean metrics per configuration</h2>")
    parts.append(
        _table(
            ["configuration", "images", "s/image", "speed-up", *map(_label, metric_cols)],
            [
                [
                    c["name"],
                    c["summary"]["images"],
                    c["summary"]["s_per_image"],
                    c["summary"]["speedup"],
                    *[c["summary"].get(m) for m in metric_cols],
                ]
                for c in ok
            ],
        )
    )
    parts.append("<h2>Plots</h2><div class='plots'>")
    if results["sweep"]:
        parts.append(_plot_sweep(results["sweep"], names))
    parts.append(_plot_speed(configs, meta["hq_dir"] is not None and "psnr" in names))
    parts.append("</div>")
    if results["sweep"]:
        parts.append("<h2>Fidelity sweep (baseline configuration)</h2>")
        parts.append(
            _table(
                ["fidelity", "s/image", *map(_label, names)],
                [[s["fidelity"], s["s_per_image"], *[s.get(m) for m in names]] for s in results["sweep"]],
            )
        )
    parts.append("<h2>Per image</h2>")
    by_image: dict[str, list[dict[str, Any]]] = {}
    for row in results["rows"]:
        by_image.setdefault(row["image"], []).append(row)
    for stem, rows in by_image.items():
        parts.append(f"<h3>{_e(stem)}</h3><div>")
        for label, rel in crops.get(stem, []):
            caption = f"<figcaption>{_e(label)}</figcaption>"
            parts.append(f"<figure><img src='{_e(rel)}' alt='{_e(label)}'>{caption}</figure>")
        parts.append("</div>")
        cols = ["seconds", *names, "drift_psnr", "drift_max_level"]
        header = ["configuration", "seconds", *map(_label, names), "drift PSNR", "drift max level"]
        parts.append(_table(header, [[r["config"], *[r.get(c) for c in cols]] for r in rows]))
    parts.append("</body></html>")
    return "\n".join(parts)


def _markdown_table_to_html(md: str) -> str:
    lines = [ln.strip().strip("|").split("|") for ln in md.splitlines() if not ln.startswith("| ---")]
    header, *rows = [[c.strip() for c in ln] for ln in lines]
    return _table(header, rows, cls="drift")


def write_report(
    out_dir: Path,
    results: dict[str, Any],
    lqs: dict[str, np.ndarray],
    hqs: dict[str, np.ndarray],
    outputs: dict[str, dict[str, np.ndarray]],
    crop: int,
) -> Path:
    crops = save_crops(out_dir, lqs, hqs, outputs, crop)
    path = out_dir / "report.html"
    path.write_text(render(results, crops))
    return path


def drift_table(results: dict[str, Any]) -> str:
    """The drift table as Markdown (the CLI prints it; docs and reviews paste it)."""
    lines = [
        "| configuration | status | s/image | speed-up | drift PSNR dB (mean / min) | max level diff"
        " | mean level diff |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in results["configs"]:
        if c["status"] != "ok":
            lines.append(f"| {c['name']} | {c['status']}: {c['reason']} | | | | | |")
            continue
        s = c["summary"]
        if "drift_psnr" in s:
            d = f"{fmt(s['drift_psnr'])} / {fmt(s['drift_psnr_min'])}"
            levels = f"{s['drift_max_level']} | {s['drift_mean_level']:.3f}"
        else:
            d, levels = "baseline", "0 | 0"
        speed = f"{fmt(s['s_per_image'])} | {fmt(s['speedup'])}x"
        lines.append(f"| {c['name']} | ok | {speed} | {d} | {levels} |")
    return "\n".join(lines)
