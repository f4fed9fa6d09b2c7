"""Command line: `python -m model restore|download|convert|degrade|eval`.

Errors the user can fix (missing weights, bad input, bad option) print ONE line on stderr and exit with
code 2; other model errors exit with 1. Image I/O uses Pillow; EXIF orientation is applied on read.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from model.loaders import PRESETS
from model.options import (
    BOUNDS,
    COLOR_FIXES,
    GUIDANCE_LOSSES,
    GUIDANCE_SPACES,
    INTEGER_OPTIONS,
    PRECISIONS,
    SAMPLERS,
    START_POINTS,
    TASKS,
    UPSTREAM_FLAGS,
    VERSIONS,
)
from model.quality import cli as quality_cli

EXIT_USER_ERROR = 2
EXIT_MODEL_ERROR = 1
EXIT_CANCELED = 130
# RestoreOptions fields with a flag of their own name (the first ten have theirs above them).
KNOB_CHOICES = {
    "start_point": START_POINTS,
    "guidance_space": GUIDANCE_SPACES,
    "guidance_loss": GUIDANCE_LOSSES,
}
KNOBS = (
    "strength",
    "noise_aug",
    "start_point",
    "rescale_cfg",
    "guidance_space",
    "guidance_loss",
    "guidance_start",
    "guidance_stop",
    "guidance_repeat",
    "s_churn",
    "s_tmin",
    "s_tmax",
    "s_noise",
    "eta",
    "order",
    "stage1_tile",
    "stage1_stride",
    "vae_encode_tile",
    "vae_decode_tile",
    "latent_tile",
    "latent_stride",
)


def _restore_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("restore", help="restore one image")
    p.add_argument("input", type=Path, help="input image (any format Pillow reads)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output image (format by extension)")
    p.add_argument("--task", choices=TASKS, default="sr")
    p.add_argument("--upscale", type=float, default=None, help="output/input size (default 4 for sr, else 1)")
    p.add_argument(
        "--fidelity", type=float, default=None, help="0 = free .. 1 = follow stage 1 (default 0.5)"
    )
    p.add_argument("--steps", type=int, default=None, help="default: the version's official (50; v2.1: 10)")
    p.add_argument(
        "--sampler",
        choices=SAMPLERS,
        default=None,
        help="default: the version's official (spaced; v2.1: edm_dpm++_3m_sde)",
    )
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--prompt", default=None, help="default: the version's official positive prompt")
    p.add_argument("--negative-prompt", default=None, help="default: the version's official negative prompt")
    p.add_argument("--cfg", type=float, default=None, help="guidance scale (default: official, 4; v2.1: 8)")
    p.add_argument("--color-fix", choices=COLOR_FIXES, default=None, help="default: wavelet")
    knobs = p.add_argument_group("upstream knobs (default: the version's official / automatic tiles)")
    for name in KNOBS:
        flag, upstream = "--" + name.replace("_", "-"), f"upstream {UPSTREAM_FLAGS[name]}"
        if name == "rescale_cfg":
            knobs.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=upstream)
            continue
        kind = int if name in INTEGER_OPTIONS else str if name in KNOB_CHOICES else float
        bound = f"; [{BOUNDS[name][0]:g}, {BOUNDS[name][1]:g}]" if name in BOUNDS else ""
        knobs.add_argument(flag, type=kind, choices=KNOB_CHOICES.get(name), help=upstream + bound)
    _common_model_args(p)
    p.add_argument(
        "--preset",
        choices=PRESETS,
        default="full",
        help="tiny = random weights for smoke tests, NOT a restoration model",
    )
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    p.add_argument(
        "--compile", action="store_true", help="torch.compile the UNet/ControlNet (slow first run)"
    )
    p.add_argument(
        "--precision",
        choices=list(PRECISIONS),
        default=None,
        help="default fp16 on CUDA, fp32 on CPU",
    )


def _common_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--version", choices=VERSIONS, default="v2")
    p.add_argument("--weights-dir", type=Path, default=None, help="where the official weight files live")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m model", description="DiffBIR blind image restoration")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and timings")
    sub = parser.add_subparsers(dest="command", required=True)
    _restore_parser(sub)
    d = sub.add_parser("download", help="download the official weight files of a version")
    _common_model_args(d)
    c = sub.add_parser("convert", help="write the converted safetensors cache (faster start-up)")
    _common_model_args(c)
    quality_cli.add_degrade_parser(sub)
    quality_cli.add_eval_parser(sub)
    return parser


def _one_line(exc: BaseException) -> str:
    from model.errors import WeightsMissingError

    if isinstance(exc, WeightsMissingError):
        where = f" in {exc.weights_dir}" if exc.weights_dir else ""
        return (
            f"missing weight files{where}: {', '.join(exc.missing)}; "
            f"{(exc.hint or 'download them with: python -m model download').strip()}"
        )
    return " ".join(str(exc).split())


def _cmd_restore(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image, ImageOps

    from model.acceleration import Acceleration
    from model.errors import InvalidInputError
    from model.pipeline import DiffBIRPipeline
    from model.presets import default_options

    try:
        with Image.open(args.input) as img:
            img = ImageOps.exif_transpose(img)
            # Pillow decodes 16-bit gray as mode "I;16"/"I": keep 16-bit data for model.inputs to scale.
            keep = img.mode in ("L", "LA", "RGB", "RGBA", "I;16")
            pixels = np.asarray(img if keep else img.convert("RGBA"))
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"cannot read {args.input}: {exc}") from exc
    if pixels.dtype == np.dtype(">u2") or pixels.dtype == np.dtype("<u2"):
        pixels = pixels.astype(np.uint16)
    given = {
        "fidelity": args.fidelity,
        "color_fix": args.color_fix,
        "upscale": args.upscale,
        "steps": args.steps,
        "sampler": args.sampler,
        "prompt": args.prompt,
        "negative_prompt": args.negative_prompt,
        "cfg_scale": args.cfg,
        **{name: getattr(args, name) for name in KNOBS},
    }
    # Flags left out take the official defaults of --version (model.presets.OFFICIAL_SAMPLING) and
    # RestoreOptions' own defaults for the rest.
    options = default_options(
        args.version, args.task, seed=args.seed, **{k: v for k, v in given.items() if v is not None}
    ).validate()  # a bad flag fails before the weights load
    pipe = DiffBIRPipeline.from_preset(
        preset=args.preset,
        version=args.version,
        weights_dir=args.weights_dir,
        device=args.device,
        precision=args.precision,
        tasks=[args.task],
        acceleration=Acceleration(compile=args.compile),
    )
    started = time.perf_counter()
    last_stage = [""]

    def progress(stage: str, step: int, total: int) -> None:
        if args.verbose and (stage != last_stage[0] or step == total):
            print(f"  {stage}: {step}/{total}", file=sys.stderr)
            last_stage[0] = stage

    result = pipe.restore(pixels, options, progress=progress)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(result.image).save(args.output)
    h, w = result.image.shape[:2]
    ran = result.options
    how = f", {ran.sampler} x{result.sampler_steps}, cfg {ran.cfg_scale:g}" if ran is not None else ""
    elapsed = time.perf_counter() - started
    print(f"wrote {args.output} ({w}x{h}, seed {result.seed}{how}, {elapsed:.1f}s)")
    if args.verbose:
        print("  timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items()), file=sys.stderr)
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    from model import weights

    paths = weights.download_version(args.version, weights_dir=args.weights_dir)
    for path in paths:
        print(path)
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from model.loaders import convert_version

    for path in convert_version(args.version, weights_dir=args.weights_dir):
        print(f"wrote {path}")
    return 0


COMMANDS = {
    "restore": _cmd_restore,
    "download": _cmd_download,
    "convert": _cmd_convert,
    "degrade": quality_cli.cmd_degrade,
    "eval": quality_cli.cmd_eval,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    from model.errors import CanceledError, InvalidInputError, ModelError, WeightsMissingError

    try:
        return COMMANDS[args.command](args)
    except (WeightsMissingError, InvalidInputError) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except CanceledError:
        print("error: canceled", file=sys.stderr)
        return EXIT_CANCELED
    except ModelError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_MODEL_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_CANCELED
