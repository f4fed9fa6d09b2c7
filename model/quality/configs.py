"""Run configurations an evaluation compares: the fp32 eager baseline and the acceleration modes.

A configuration is named by knobs joined with `+` (`fp16+graphs+compile`); each knob changes one thing from
the baseline (fp32, eager, untiled, the version's official sampler and steps):

- `fp32` / `fp16` / `bf16`: the weights' and activations' precision;
- `graphs`: CUDA graphs for the sampler's per-step nets (and stage 1 / VAE at repeated sizes);
- `compile`: torch.compile of the UNet and ControlNet;
- `fast`: 10-step DPM-Solver++ (the fast mode of benchmarks/gpu.py), at the run's fidelity;
- `tiled`: every stage that can tile does (forced with a 1-byte memory budget).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

PRECISIONS = ("fp32", "fp16", "bf16")
KNOBS = (*PRECISIONS, "graphs", "compile", "fast", "tiled")
BASELINE_NAME = "fp32"
FAST_SAMPLER = "dpmpp"
FAST_STEPS = 10
TILED_BUDGET_BYTES = 1  # below any stage's estimate, so every stage tiles
DEFAULT_CONFIGS = ("fp32", "fp16", "bf16", "graphs", "compile", "fast", "tiled")


@dataclass(frozen=True)
class RunConfig:
    name: str
    precision: str = "fp32"
    cuda_graphs: bool = False
    compile: bool = False
    fast: bool = False
    tiled: bool = False

    @property
    def is_baseline(self) -> bool:
        return self == BASELINE

    def knobs(self) -> dict[str, object]:
        return {
            "precision": self.precision,
            "cuda_graphs": self.cuda_graphs,
            "compile": self.compile,
            "fast": self.fast,
            "tiled": self.tiled,
        }


BASELINE = RunConfig(BASELINE_NAME)


def parse_config(name: str) -> RunConfig:
    """`fp16+graphs` -> RunConfig; unknown or conflicting knobs raise ValueError."""
    knobs = [k.strip() for k in name.split("+") if k.strip()]
    unknown = [k for k in knobs if k not in KNOBS]
    if not knobs or unknown:
        raise ValueError(
            f"unknown configuration knob(s) {unknown or [name]}; expected {'+'.join(KNOBS)} parts"
        )
    precisions = [k for k in knobs if k in PRECISIONS]
    if len(precisions) > 1:
        raise ValueError(f"configuration {name!r} names more than one precision: {precisions}")
    return RunConfig(
        name="+".join(knobs),
        precision=precisions[0] if precisions else "fp32",
        cuda_graphs="graphs" in knobs,
        compile="compile" in knobs,
        fast="fast" in knobs,
        tiled="tiled" in knobs,
    )


def parse_configs(names: list[str]) -> list[RunConfig]:
    """The baseline first (always run: every other configuration is compared with it), then the rest."""
    configs = [BASELINE]
    for name in names:
        config = parse_config(name)
        if config not in configs:
            configs.append(config)
    return configs


def not_applicable(config: RunConfig, device: torch.device) -> str | None:
    """Why `config` cannot run on `device`, or None."""
    import torch

    if config.cuda_graphs and device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    if config.precision == "fp16" and device.type == "cpu":
        return "fp16 on CPU: the pipeline runs it as bf16 (see the bf16 row)"
    if config.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "this GPU has no bf16"
    return None
