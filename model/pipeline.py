"""`DiffBIRPipeline`: the two DiffBIR stages end to end, loaded once and reused for every request.

`restore` reads like the paper: stage 1 removes the degradation (SwinIR / BSRNet / SCUNet), stage 2
regenerates detail with SD 2.1 steered by IRControlNet (condition = VAE latent of the stage-1 image),
optionally pulled towards the stage-1 result by latent image guidance (Alg. 1, `fidelity`), then the colour
is fixed against stage 1 and the result is resized to the requested size. The maths lives in the modules it
calls; this file decides sizes, tiling, precision, batching, seeds, timings, progress and cancellation.

Stage-2 conventions follow the reference exactly (`stage2` / `postprocess`, pinned by the golden fixtures):
zero-pad to multiples of 64, `*2-1`, VAE mode*0.18215, uncond = negative prompt + the SAME c_img, crop back,
wavelet fix, bicubic-antialias resize, uint8 truncation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import secrets
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from model import fidelity as fidelity_mod
from model import imageops
from model.cldm import Condition, ControlLDM
from model.colorfix import apply_color_fix
from model.errors import CanceledError, InvalidInputError, ModelError
from model.graphs import CudaGraphs
from model.guidance import Guidance
from model.inputs import check_pixels, output_size, prepare_image
from model.sampling import Sampler, Tiling, augment_condition, make_sampler, sample, start_latent
from model.sampling.cfg import Denoiser
from model.schedule import Diffusion, make_diffusion
from model.stage1 import Stage1Net
from model.tiling import num_tiles, tile_coords, window_weights

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]  # (stage, step, total)
CancelFn = Callable[[], bool]  # True -> CanceledError at the next check

TASKS = ("sr", "face", "denoise")
SAMPLERS = ("spaced", "ddim", "dpmpp")
COLOR_FIXES = ("wavelet", "adain", "none")
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
STAGES = ("stage1", "vae_encode", "sampler", "vae_decode", "postprocess")
MAX_STEPS = 1000
MAX_SEED = 2**63 - 1

DEFAULT_MAX_PIXELS = 4096 * 4096
# torch.compile recompiles per input shape (batch rows x latent size); see `_compile`.
COMPILE_RECOMPILE_LIMIT = 64
# Stage-1 and VAE calls on images up to this many output pixels (per batch) may be kept as CUDA graphs;
# larger ones run eagerly so a one-off big image does not pin its activations in the graph pool.
GRAPH_MAX_PIXELS = 1024 * 1024
# The reference runs the diffusion with the short side at >= 512 px (SD 2.1-base's training size).
FULL_MIN_SHORT_EDGE = 512
# The tiny preset is for smoke tests: keep its diffusion small so CPU runs stay fast.
TINY_MIN_SHORT_EDGE = 64
PAD_MULTIPLE = 64  # pixels; the reference pads the stage-1 image to this before the VAE
LATENT_PAD_MULTIPLE = 8  # latent cells (a no-op after the 64-pixel pad, kept to mirror the reference)


# Activation estimates in bytes per element size (x2 for fp16, x4 for fp32), scaled by model width for other
# presets. Measured with benchmarks/gpu.py (full SD 2.1 sizes, SDPA, H200): UNet+ControlNet about 37 kB/elem
# per latent cell and batch row at 512 px batch 8; VAE decode up to ~1.4 kB/elem per pixel (fp32). The UNet
# figure keeps a 2x margin because an OOM costs a whole job while a needless tile costs a little speed.
UNET_BYTES_PER_CELL = 90_000  # UNet + ControlNet forward, per latent cell per batch row
VAE_BYTES_PER_PIXEL = 1_500  # encoder or decoder at full res (256 channels x a few live tensors, workspaces)
STAGE1_BYTES_PER_OUT_PIXEL = 600  # 64 feature channels at output resolution x a few live tensors
IMAGE_BYTES_PER_PIXEL = 3 * 4 * 8  # float32 RGB copies alive during colour fix / resize (~8)


# Prompts of the official inference (XPixelGroup/DiffBIR): v1/v2 README commands use an empty positive prompt
# and this negative one; v2.1's `inference.py` defaults are the two long prompts below (its captioner, which
# prepends an image caption to the positive prompt, is not part of this service).
OFFICIAL_DEFAULT_NEGATIVE_PROMPT = "low quality, blurry, low-resolution, noisy, unsharp, weird textures"
OFFICIAL_V21_POSITIVE_PROMPT = (
    "Cinematic, High Contrast, highly detailed, taken using a Canon EOS R camera, "
    "hyper detailed photo - realistic maximum detail, 32k, Color Grading, ultra HD, "
    "extreme meticulous detailing, "
    "skin pore detailing, hyper sharpness, perfect without deformations."
)
OFFICIAL_V21_NEGATIVE_PROMPT = (
    "painting, oil painting, illustration, drawing, art, sketch, oil painting, cartoon, "
    "CG Style, 3D render, unreal engine, blurring, dirty, messy, worst quality, low quality, "
    "frames, watermark, "
    "signature, jpeg artifacts, deformed, lowres, over-smooth."
)


@dataclass(frozen=True)
class RestoreOptions:
    task: str = "sr"  # "sr" | "face" | "denoise"
    upscale: float = 4.0  # output size / input size (sr); 1.0 for denoise/face
    fidelity: float = 0.5  # 0..1, see model/fidelity.py
    steps: int = 50
    sampler: str = "spaced"  # "spaced" (reference DDPM) | "ddim" | "dpmpp"
    seed: int | None = None
    prompt: str = ""
    negative_prompt: str = OFFICIAL_DEFAULT_NEGATIVE_PROMPT
    cfg_scale: float = 4.0
    color_fix: str = "wavelet"  # "wavelet" | "adain" | "none"

    def validate(self) -> RestoreOptions:
        """Raise InvalidInputError for any value the pipeline cannot run (before any work is done)."""
        if self.task not in TASKS:
            raise InvalidInputError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.sampler not in SAMPLERS:
            raise InvalidInputError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.color_fix not in COLOR_FIXES:
            raise InvalidInputError(f"color_fix must be one of {COLOR_FIXES}, got {self.color_fix!r}")
        if not isinstance(self.steps, int) or not 1 <= self.steps <= MAX_STEPS:
            raise InvalidInputError(f"steps must be an integer in [1, {MAX_STEPS}], got {self.steps!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED):
            raise InvalidInputError(f"seed must be an integer in [0, 2**63), got {self.seed!r}")
        if not math.isfinite(self.cfg_scale) or not 0.0 <= self.cfg_scale <= 30.0:
            raise InvalidInputError(f"cfg_scale must be in [0, 30], got {self.cfg_scale!r}")
        fidelity_mod.check_fidelity(self.fidelity)
        return self

    def batch_key(self) -> RestoreOptions:
        """Options that must agree for two images to share a stage-2 batch (everything but the seed)."""
        return dataclasses.replace(self, seed=None)


@dataclass
class RestoreResult:
    image: np.ndarray  # H x W x 3 uint8 RGB
    timings: dict[str, float]  # seconds: stage1, vae_encode, sampler, vae_decode, postprocess, total
    peak_memory_bytes: int | None  # CUDA peak during this call, None on CPU
    seed: int
    sampler_steps: int
    conversions: list[str] = field(default_factory=list)  # input conversions (model/inputs.py)


@dataclass(frozen=True)
class Stage2Settings:
    """Reference stage-2 knobs that are fixed per release (not user options)."""

    start_point: str = "noise"  # "noise" | "cond" (x_T = q_sample(c_img, 999))
    noise_aug: int = 0  # diffuse c_img to this training step (0 = off)
    rescale_cfg: bool = False
    strength: float = 1.0  # ControlNet residual scale


@dataclass(frozen=True)
class TileSizes:
    """Window sizes used when a stage must be tiled; strides leave a quarter of overlap for the blending."""

    stage1: tuple[int, ...] = (512, 256, 128)  # input pixels, tried largest first (SwinIR needs x64)
    latent: int = 64  # latent cells (512 px windows, as the reference's default)
    vae_encode: int = 512  # pixels
    vae_decode: int = 64  # latent cells

    @staticmethod
    def stride(tile: int) -> int:
        return max(1, tile * 3 // 4)


FULL_TILES = TileSizes()
# Tiny preset: small windows so tiling is exercised on test-sized images.
TINY_TILES = TileSizes(stage1=(64,), latent=8, vae_encode=64, vae_decode=8)


@dataclass(frozen=True)
class TilePlan:
    """Which parts run tiled for one batch (None = untiled)."""

    stage1_tile: int | None = None  # input pixels
    latent: Tiling | None = None
    vae_encode: int | None = None  # window in pixels
    vae_decode: int | None = None  # window in latent cells

    @property
    def any(self) -> bool:
        return bool(self.stage1_tile or self.latent or self.vae_encode or self.vae_decode)


# ----------------------------------------------------------------------------------------------------
# small helpers


class _Hooks:
    """Per-item progress and cancellation for a batch; a canceled item is finished and discarded."""

    def __init__(self, progresses: Sequence[ProgressFn | None], cancels: Sequence[CancelFn | None]) -> None:
        self.progresses = list(progresses)
        self.cancels = list(cancels)
        self.canceled = [False] * len(self.cancels)

    def progress(self, stage: str, step: int, total: int) -> None:
        for i, fn in enumerate(self.progresses):
            if fn is not None and not self.canceled[i]:
                fn(stage, step, total)

    def all_canceled(self) -> bool:
        """Poll every item; True only when no item is left to finish (then the batch stops)."""
        for i, fn in enumerate(self.cancels):
            if fn is not None and not self.canceled[i] and fn():
                self.canceled[i] = True
        return all(self.canceled)

    def check(self, where: str) -> None:
        if self.all_canceled():
            raise CanceledError(f"canceled {where}")


class _Timer:
    """Stage timings; CUDA is synchronised at stage boundaries only (never inside the step loop)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.timings: dict[str, float] = {}

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start


class _FixedPosterior:
    """A `LatentCodec` for Guidance that returns an already computed posterior (no second, untiled encode)."""

    def __init__(self, vae: Any, posterior: DiagonalGaussianDistribution) -> None:
        self.vae = vae
        self.scale_factor = vae.scale_factor
        self.downscale = vae.downscale
        self._posterior = posterior

    def posterior(self, img: torch.Tensor) -> DiagonalGaussianDistribution:
        return self._posterior

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z)


def _posterior(vae: Any, img: torch.Tensor, tile: int | None) -> DiagonalGaussianDistribution:
    """The VAE posterior of `img`; tiled = moments blended over windows like `VAE.encode_tiled` (which returns
    only the latent, while guidance also needs the posterior to draw its targets)."""
    if not tile:
        return vae.posterior(img)
    d = vae.downscale
    b, _, h, w = img.shape
    moments: torch.Tensor | None = None
    weight_sum = torch.zeros((1, 1, h // d, w // d), dtype=torch.float32, device=img.device)
    for hi, hi_end, wi, wi_end in tile_coords(h, w, tile, TileSizes.stride(tile)):
        part = vae.posterior(img[..., hi:hi_end, wi:wi_end]).parameters.float()
        if moments is None:
            moments = torch.zeros((b, part.shape[1], h // d, w // d), dtype=torch.float32, device=img.device)
        weights = window_weights(part.shape[-2], part.shape[-1], device=img.device)
        region = (..., slice(hi // d, hi_end // d), slice(wi // d, wi_end // d))
        moments[region] += part * weights
        weight_sum[region] += weights
    assert moments is not None
    return DiagonalGaussianDistribution((moments / weight_sum).to(vae.dtype))


def max_grad_rescale(sampler: Sampler, steps: int) -> float:
    """Largest `x0_grad_rescale` of a `steps`-step run (on CPU, once per run: no sync inside the loop)."""
    sampler.set_timesteps(steps, device="cpu")
    values = [float(sampler.x0_grad_rescale(i)) for i in range(steps)]
    finite = [v for v in values if math.isfinite(v) and v > 0]
    return max(finite) if finite else 1.0


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("device 'cuda' requested but CUDA is not available (use --device cpu)")
    return dev


def _resolve_dtype(precision: str | None, device: torch.device) -> torch.dtype:
    if precision is None:
        precision = "fp16" if device.type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise InvalidInputError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    dtype = PRECISIONS[precision]
    if device.type == "cpu" and dtype == torch.float16:
        log.warning("fp16 on CPU is slow and imprecise; using bf16 instead")
        dtype = torch.bfloat16
    return dtype


def _latent_size(h: int, w: int) -> tuple[int, int]:
    """A diffusion size in pixels -> its latent size; refuses sizes no padded image can have."""
    if h <= 0 or w <= 0 or h % PAD_MULTIPLE or w % PAD_MULTIPLE:
        raise InvalidInputError(f"compile sizes must be positive multiples of {PAD_MULTIPLE} px, got {h}x{w}")
    return h // 8, w // 8


def _default_budget(device: torch.device, graph_pool_bytes: int = 0) -> int:
    """Bytes available for activations: CUDA free memory (plus what the allocator holds but does not use), or
    half of the machine's RAM on CPU. Taken at every call, so other processes on the GPU are accounted for."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        # The CUDA graphs' pool is cached but not free for anything else.
        return int(max(0, free + cached - graph_pool_bytes) * 0.85)
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * 0.5)
    except (ValueError, OSError, AttributeError):
        return 16 << 30


# ----------------------------------------------------------------------------------------------------
# the pipeline


class DiffBIRPipeline:
    """Both stages, ready to run. Build with `from_preset`; `restore` / `restore_batch` per request."""

    def __init__(
        self,
        models: Mapping[str, ControlLDM],
        stage1: Mapping[str, Stage1Net],
        *,
        version: str = "v2",
        preset: str = "full",
        device: torch.device | str = "cpu",
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        memory_budget_bytes: int | None = None,
        min_short_edge: int = FULL_MIN_SHORT_EDGE,
        stage2_settings: Stage2Settings | None = None,
        tiles: TileSizes = FULL_TILES,
        channels_last: bool | None = None,
        compile: bool = False,
        cuda_graphs: bool | CudaGraphs | None = None,
        compile_sizes: Collection[tuple[int, int]] | None = None,
    ) -> None:
        """`cuda_graphs`: replay the per-step nets (and warm stage-1 / VAE shapes) as CUDA graphs; None = on
        for CUDA devices. A `CudaGraphs` instance brings its own capture backend (tests use a host one).

        `compile`: torch.compile the UNet and ControlNet, for every shape or, with `compile_sizes`, only for
        diffusion sizes (H, W) in pixels in that set (multiples of 64; 512x512 also covers tiled windows);
        other sizes run the eager nets, so an unusual size never waits a minute for a compilation."""
        missing = [t for t in models if t not in stage1]
        if missing or not models:
            raise ModelError(f"pipeline needs a stage-1 net and a ControlLDM per task; missing for {missing}")
        self.models = dict(models)
        self.stage1 = dict(stage1)
        self.version = version
        self.preset = preset
        self.device = torch.device(device)
        self.max_pixels = max_pixels
        self.memory_budget_bytes = memory_budget_bytes
        self.min_short_edge = min_short_edge
        self.stage2_settings = stage2_settings or Stage2Settings()
        self.tiles = tiles
        any_model = next(iter(self.models.values()))
        self.dtype = any_model.dtype
        diff = any_model.diffusion
        self.diffusion: Diffusion = make_diffusion(
            zero_snr=diff.zero_snr, parameterization=diff.parameterization
        )
        if channels_last is None:
            channels_last = self.device.type == "cuda"
        if channels_last:
            self._to_channels_last()
        self.compile_latents: frozenset[tuple[int, int]] | None = (
            None if compile_sizes is None else frozenset(_latent_size(h, w) for h, w in compile_sizes)
        )
        self._compiled: dict[int, ControlLDM] = self._compile() if compile else {}
        if cuda_graphs is None:
            cuda_graphs = self.device.type == "cuda"
        if cuda_graphs is True and self.device.type != "cuda":
            raise InvalidInputError("cuda_graphs=True needs a CUDA device")
        self.graphs: CudaGraphs | None = (
            cuda_graphs
            if isinstance(cuda_graphs, CudaGraphs)
            else CudaGraphs(self.device)
            if cuda_graphs
            else None
        )

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.models)

    # ---- construction ------------------------------------------------------------------------------------

    @classmethod
    def from_preset(
        cls,
        preset: str = "full",
        version: str = "v2",
        weights_dir: str | Path | None = None,
        device: str | torch.device | None = "cuda",
        precision: str | None = "fp16",
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        memory_budget_bytes: int | None = None,
        *,
        tasks: Sequence[str] | None = None,
        compile: bool = False,
        seed: int = 0,
        files_config: str = "full",
        cuda_graphs: bool | None = None,
        compile_sizes: Collection[tuple[int, int]] | None = None,
    ) -> DiffBIRPipeline:
        """`full`: the official weights of `version` (all `tasks`, default all three) from `weights_dir`,
        through the converted safetensors cache when `python -m model convert` wrote one. `tiny`: random
        weights with the tiny configs -- a smoke-test model that does NOT restore anything.
        `device=None` picks CUDA if available; `precision=None` picks fp16 on CUDA, fp32 on CPU.

        `files_config` (preset `full` only) names the network sizes the official files are read with:
        "full" (SD 2.1 base, the real files) or "tiny" (official-layout files written from the reference's
        tiny weights, so the whole official loading path runs in tests; also picks the tiny diffusion
        size and tile windows)."""
        from model import loading

        dev = _resolve_device(device)
        dtype = _resolve_dtype(precision, dev)
        tasks = tuple(tasks or TASKS)
        for task in tasks:
            if task not in TASKS:
                raise InvalidInputError(f"unknown task {task!r}; expected one of {TASKS}")
        if version not in STAGE2_SETTINGS:
            raise InvalidInputError(f"unknown version {version!r}; expected one of {sorted(STAGE2_SETTINGS)}")
        if preset == "tiny":
            log.warning(
                "preset 'tiny': RANDOM weights, NOT a restoration model -- outputs are noise-like; "
                "use it only to test plumbing (service smoke runs, CI)"
            )
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                cldm = loading.init_tiny_random(seed=seed, diffusion=version)
                nets = {task: _tiny_stage1(version, task) for task in tasks}
            cldm = cldm.to(device=dev, dtype=dtype)
            models = dict.fromkeys(tasks, cldm)
            min_edge, tiles = TINY_MIN_SHORT_EDGE, TINY_TILES
        elif preset == "full":
            if files_config not in FILES_CONFIGS:
                raise InvalidInputError(
                    f"unknown files_config {files_config!r}; expected one of {FILES_CONFIGS}"
                )
            models, nets = _load_full(version, tasks, weights_dir, dev, dtype, files_config)
            min_edge, tiles = (
                (FULL_MIN_SHORT_EDGE, FULL_TILES)
                if files_config == "full"
                else (TINY_MIN_SHORT_EDGE, TINY_TILES)
            )
        else:
            raise InvalidInputError(f"unknown preset {preset!r}; expected 'full' or 'tiny'")
        nets = {
            task: net.to(device=dev, dtype=dtype).eval().requires_grad_(False) for task, net in nets.items()
        }
        return cls(
            models,
            nets,
            version=version,
            preset=preset,
            device=dev,
            max_pixels=max_pixels,
            memory_budget_bytes=memory_budget_bytes,
            min_short_edge=min_edge,
            stage2_settings=STAGE2_SETTINGS[version],
            tiles=tiles,
            compile=compile,
            cuda_graphs=cuda_graphs,
            compile_sizes=compile_sizes,
        )

    def _unique_models(self) -> list[ControlLDM]:
        return list({id(m): m for m in self.models.values()}.values())

    def _to_channels_last(self) -> None:
        for m in self._unique_models():
            for part in (m.unet, m.controlnet, m.vae):
                part.to(memory_format=torch.channels_last)
        for net in self.stage1.values():
            net.to(memory_format=torch.channels_last)

    def _compile(self) -> dict[int, ControlLDM]:
        """Compiled twins of the ControlLDMs (same weights; the UNet and ControlNet wrapped by torch.compile),
        by id of the eager model. Each new input shape compiles once (about a minute for the full model on 16
        cores; TORCHINDUCTOR_CACHE_DIR keeps the result for later processes).

        The UNet's and the ControlNet's forwards share one diffusers decorator, and dynamo counts recompiles
        per code object: its default limit (8) is spent after four batch shapes, and past it dynamo silently
        runs eagerly (seen on an H200 at the fifth). The limit is raised for this process."""
        import torch._dynamo

        config = torch._dynamo.config
        name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
        setattr(config, name, max(int(getattr(config, name)), COMPILE_RECOMPILE_LIMIT))
        done: dict[int, Any] = {}

        def compiled(mod: torch.nn.Module) -> Any:
            if id(mod) not in done:
                done[id(mod)] = torch.compile(mod, dynamic=False)
            return done[id(mod)]

        return {
            id(m): ControlLDM(m.cfg, m.diffusion, compiled(m.unet), compiled(m.controlnet), m.vae, m.text)
            for m in self._unique_models()
        }

    def _net_for(self, model: ControlLDM, x: torch.Tensor) -> ControlLDM:
        """The compiled twin of `model` when this latent size is one to compile, else `model` itself."""
        twin = self._compiled.get(id(model))
        if twin is None:
            return model
        if self.compile_latents is not None and tuple(x.shape[-2:]) not in self.compile_latents:
            return model
        return twin

    # ---- public API --------------------------------------------------------------------------------------

    def restore(
        self,
        image: np.ndarray,
        options: RestoreOptions | None = None,
        progress: ProgressFn | None = None,
        should_cancel: CancelFn | None = None,
    ) -> RestoreResult:
        """Restore one H x W x C image (uint8/uint16; see model/inputs.py) -> RestoreResult (uint8 RGB)."""
        result = self.restore_batch([image], [options or RestoreOptions()], [progress], [should_cancel])[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def restore_batch(
        self,
        images: Sequence[np.ndarray],
        options_list: Sequence[RestoreOptions],
        progresses: Sequence[ProgressFn | None] | None = None,
        cancels: Sequence[CancelFn | None] | None = None,
    ) -> list[RestoreResult | Exception]:
        """Restore several images; those with the same size and options (seed aside) share a stage-2 batch.

        Returns one entry per image: a RestoreResult or the exception for that image (bad input, canceled).
        A canceled item is finished with its batch and discarded; the batch stops only when all are canceled.
        Seeds are per image (`torch.Generator` each), so an image gives the same result alone or in a batch.
        """
        n = len(images)
        if len(options_list) != n:
            raise InvalidInputError(f"{n} images but {len(options_list)} options")
        progresses = list(progresses) if progresses is not None else [None] * n
        cancels = list(cancels) if cancels is not None else [None] * n
        results: list[RestoreResult | Exception | None] = [None] * n
        groups: dict[tuple[Any, ...], list[int]] = {}
        prepared: dict[int, tuple[np.ndarray, list[str], int, tuple[int, int]]] = {}
        for i, (image, options) in enumerate(zip(images, options_list, strict=True)):
            try:
                options = options.validate()
                if options.task not in self.models:
                    raise InvalidInputError(
                        f"task {options.task!r} is not loaded (loaded: {list(self.models)})"
                    )
                prep = prepare_image(image, self.max_pixels)
                out_hw = output_size(*prep.size, options.upscale, self.max_pixels)
                # Stage 2 runs with the short side raised to `min_short_edge`: a thin strip (8 x 2000 px)
                # would become a huge image there, so the limit applies to that size too.
                check_pixels(
                    *self.diffusion_size(prep.size, out_hw, options.task),
                    self.max_pixels,
                    f"stage-2 (short side raised to {self.min_short_edge} px)",
                )
                seed = options.seed if options.seed is not None else secrets.randbelow(MAX_SEED)
            except ModelError as exc:
                results[i] = exc
                continue
            prepared[i] = (prep.image, prep.conversions, seed, out_hw)
            groups.setdefault((prep.image.shape, options.batch_key()), []).append(i)
        for (_, options), members in groups.items():
            for chunk in self._chunks(members, prepared[members[0]][0].shape, options):
                self._run_group(chunk, options, prepared, progresses, cancels, results)
        return [r if r is not None else ModelError("internal error: no result") for r in results]

    # ---- batching and planning ---------------------------------------------------------------------------

    def _budget(self) -> int:
        if self.memory_budget_bytes is not None:
            return self.memory_budget_bytes
        return _default_budget(self.device, self.graphs.stats.pool_bytes if self.graphs else 0)

    def _graphed(
        self,
        name: str,
        owner: object,
        fn: Callable[..., Any],
        min_uses: int = 2,
        max_numel: int | None = None,
    ) -> Callable[..., Any]:
        """`fn` through the pipeline's CUDA graph cache for `owner`, or `fn` itself when graphs are off."""
        if self.graphs is None:
            return fn
        return self.graphs.cache(name, owner, fn, min_uses=min_uses, max_numel=max_numel)

    def _denoiser(self, model: ControlLDM) -> Denoiser:
        """The sampler's model call (compiled or not by size), captured once per shape and replayed at every
        step."""
        if self.graphs is None:
            return lambda x, t, cond, strength: self._net_for(model, x)(x, t, cond, strength)
        graphed = self.graphs.cache(
            "denoiser",
            model,
            lambda x, t, c_txt, c_img, strength: self._net_for(model, x)(
                x, t, Condition(c_txt, c_img), strength
            ),
            min_uses=1,
        )
        return lambda x, t, cond, strength: graphed(x, t, cond.c_txt, cond.c_img, strength=strength)

    def _elem(self) -> int:
        return torch.finfo(self.dtype).bits // 8

    def _width_ratio(self, task: str) -> float:
        cfg = self.models[task].cfg
        return cfg.unet.model_channels / 320

    def _vae_ratio(self, task: str) -> float:
        return self.models[task].cfg.vae.ch / 128

    def diffusion_size(self, in_hw: tuple[int, int], out_hw: tuple[int, int], task: str) -> tuple[int, int]:
        """(H, W) of the image stage 2 runs on: the output size, short side raised to `min_short_edge`."""
        h, w = out_hw
        if min(h, w) < self.min_short_edge:
            h, w = imageops.short_edge_size(h, w, self.min_short_edge)
        return h, w

    def plan(
        self, in_hw: tuple[int, int], out_hw: tuple[int, int], task: str, batch: int, cfg: bool
    ) -> TilePlan:
        """Tile whatever would not fit the memory budget (byte estimates from sizes; see docs/model.md)."""
        budget = self._budget()
        e = self._elem()
        h, w = self.diffusion_size(in_hw, out_hw, task)
        ph, pw = h + (-h) % PAD_MULTIPLE, w + (-w) % PAD_MULTIPLE
        lh, lw = ph // 8, pw // 8
        rows = batch * (2 if cfg else 1)
        unet = UNET_BYTES_PER_CELL * e * self._width_ratio(task)
        vae = VAE_BYTES_PER_PIXEL * e * self._vae_ratio(task)
        latent = None
        sizes = self.tiles
        if unet * lh * lw * rows > budget and max(lh, lw) > sizes.latent:
            latent = Tiling(sizes.latent, sizes.stride(sizes.latent))
        too_big = vae * ph * pw * batch > budget
        vae_encode = sizes.vae_encode if too_big and max(ph, pw) > sizes.vae_encode else None
        vae_decode = sizes.vae_decode if too_big and max(lh, lw) > sizes.vae_decode else None
        net = self.stage1[task]
        # SwinIR runs at the diffusion size when untiled (see `run_stage1`), the others at the output size.
        s1_hw = (h, w) if net.kind == "swinir" else out_hw
        s1_out = (s1_hw[0] * s1_hw[1]) if net.scale == 1 else in_hw[0] * in_hw[1] * net.scale**2
        s1_bytes = STAGE1_BYTES_PER_OUT_PIXEL * e
        stage1_tile = None
        if s1_bytes * s1_out * batch > budget:
            for tile in sizes.stage1:
                stage1_tile = tile
                if s1_bytes * (tile * net.scale) ** 2 * batch <= budget:
                    break
        return TilePlan(stage1_tile=stage1_tile, latent=latent, vae_encode=vae_encode, vae_decode=vae_decode)

    def item_bytes(self, in_hw: tuple[int, int], out_hw: tuple[int, int], task: str, cfg: bool) -> int:
        """Rough activation bytes one more image adds to a stage-2 batch, after tiling."""
        plan = self.plan(in_hw, out_hw, task, 1, cfg)
        e = self._elem()
        h, w = self.diffusion_size(in_hw, out_hw, task)
        cells = (plan.latent.tile**2) if plan.latent else math.ceil(h / 8) * math.ceil(w / 8)
        unet = UNET_BYTES_PER_CELL * e * self._width_ratio(task) * cells * (2 if cfg else 1)
        return int(unet + IMAGE_BYTES_PER_PIXEL * max(h * w, out_hw[0] * out_hw[1]))

    def _chunks(self, members: list[int], shape: tuple[int, ...], options: RestoreOptions) -> list[list[int]]:
        in_hw = (shape[0], shape[1])
        out_hw = output_size(*in_hw, options.upscale)
        per_item = max(1, self.item_bytes(in_hw, out_hw, options.task, options.cfg_scale != 1.0))
        size = max(1, int(self._budget() // per_item))
        return [members[i : i + size] for i in range(0, len(members), size)]

    def _run_group(
        self,
        members: list[int],
        options: RestoreOptions,
        prepared: Mapping[int, tuple[np.ndarray, list[str], int, tuple[int, int]]],
        progresses: Sequence[ProgressFn | None],
        cancels: Sequence[CancelFn | None],
        results: list[RestoreResult | Exception | None],
    ) -> None:
        hooks = _Hooks([progresses[i] for i in members], [cancels[i] for i in members])
        seeds = [prepared[i][2] for i in members]
        try:
            images, timings, peak = self._run(
                np.stack([prepared[i][0] for i in members]), options, seeds, prepared[members[0]][3], hooks
            )
        except CanceledError as exc:
            for i in members:
                results[i] = CanceledError(str(exc))
            return
        except Exception as exc:  # one failing group (bad size, CUDA OOM, ...) must not lose the other groups
            if not isinstance(exc, ModelError):
                log.exception("restore failed for %d image(s)", len(members))
            if self.device.type == "cuda" and isinstance(exc, torch.cuda.OutOfMemoryError):
                if self.graphs is not None:
                    self.graphs.clear()  # their pool is memory the next request may need
                torch.cuda.empty_cache()  # leave the allocator usable for the next request
            for i in members:
                results[i] = exc
            return
        for k, i in enumerate(members):
            if hooks.canceled[k]:
                results[i] = CanceledError("canceled")
            else:
                results[i] = RestoreResult(
                    image=images[k],
                    timings=dict(timings),
                    peak_memory_bytes=peak,
                    seed=seeds[k],
                    sampler_steps=options.steps,
                    conversions=list(prepared[i][1]),
                )

    # ---- the two stages ----------------------------------------------------------------------------------

    @torch.no_grad()
    def _run(
        self,
        batch: np.ndarray,
        options: RestoreOptions,
        seeds: Sequence[int],
        out_hw: tuple[int, int],
        hooks: _Hooks,
    ) -> tuple[np.ndarray, dict[str, float], int | None]:
        timer = _Timer(self.device)
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        total_start = time.perf_counter()
        in_hw = (batch.shape[1], batch.shape[2])
        use_cfg = options.cfg_scale != 1.0
        plan = self.plan(in_hw, out_hw, options.task, len(seeds), use_cfg)
        if plan.any:
            log.info("tiling for %s -> %s x%d: %s", in_hw, out_hw, len(seeds), plan)
        generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]

        hooks.check("before stage 1")
        with timer.stage("stage1"):
            if self.stage1[options.task].scale == 1 and in_hw != out_hw:
                # The official loops upscale the uint8 input with Pillow before a x1 net (see run_stage1).
                batch = imageops.resize_uint8_bicubic_pil(batch, out_hw)
            lq = imageops.uint8_to_tensor(batch, device=self.device)
            cond_img = self.run_stage1(lq, options.task, out_hw, plan, hooks)
            del lq
        hooks.check("after stage 1")
        decoded = self.stage2(
            cond_img, options, generators, plan=plan, settings=self.stage2_settings, hooks=hooks, timer=timer
        )
        with timer.stage("postprocess"):
            hooks.progress("postprocess", 0, 1)
            final = self.postprocess(decoded, cond_img, out_hw, options.color_fix)
            images = imageops.to_uint8(final)
            hooks.progress("postprocess", 1, 1)
        timings = {name: timer.timings.get(name, 0.0) for name in STAGES}
        timings["total"] = time.perf_counter() - total_start
        peak = int(torch.cuda.max_memory_allocated(self.device)) if cuda else None
        return images, timings, peak

    def run_stage1(
        self,
        lq: torch.Tensor,
        task: str,
        out_hw: tuple[int, int],
        plan: TilePlan,
        hooks: _Hooks | None = None,
    ) -> torch.Tensor:
        """Stage 1 -> the condition image at the DIFFUSION size (the output size, short side raised to
        `min_short_edge`), in the order of the official pipelines (`diffbir/pipeline.py`):

        - SwinIR: the input resized to the output size; untiled, its short side is raised BEFORE the net, so
          the net runs at the diffusion size (`SwinIRPipeline`); tiled, the net runs at the output size and
          its result is raised.
        - SCUNet: the input resized to the output size, the net, then the short side raised.

        For x1 nets `restore` has already resized the uint8 input with Pillow's bicubic, as the official loops
        do (`lq.resize(..., Image.BICUBIC)`); a tensor of another size is resized here (bicubic+antialias).
        - BSRNet (x4): the net on the input, then ONE resize of its x4 result: to the output size, or, when
          the output's short side is below `min_short_edge`, to that short side (`BSRNetPipeline`).

        Not clamped: the reference feeds the raw stage-1 result to the VAE and the colour fix.
        """
        net = self.stage1[task]
        x = lq
        if net.scale == 1 and tuple(x.shape[-2:]) != out_hw:
            x = imageops.resize_bicubic_aa(lq, out_hw)
        if net.kind == "swinir" and not plan.stage1_tile:
            x = imageops.ensure_min_short_edge(x, self.min_short_edge)
        x = x.to(self.dtype)
        tiles = (
            num_tiles(*x.shape[-2:], plan.stage1_tile, plan.stage1_tile * 3 // 4) if plan.stage1_tile else 1
        )
        if hooks:
            hooks.progress("stage1", 0, tiles)
        if plan.stage1_tile:
            tile = plan.stage1_tile
            y = net.forward_tiled(
                x,
                tile,
                tile * 3 // 4,
                progress=(lambda d, t: hooks.progress("stage1", d, t)) if hooks else None,
            )
        else:
            # Graphed from the second request of a shape on; a large one-off image stays eager.
            y = self._graphed("stage1", net, net, max_numel=GRAPH_MAX_PIXELS * 3 // net.scale**2)(x)
            if hooks:
                hooks.progress("stage1", 1, 1)
        y = y.float()
        if net.scale != 1 and min(out_hw) >= self.min_short_edge:
            return imageops.resize_bicubic_aa(y, out_hw) if tuple(y.shape[-2:]) != out_hw else y
        return imageops.ensure_min_short_edge(y, self.min_short_edge)

    def stage2(
        self,
        cond_img: torch.Tensor,
        options: RestoreOptions,
        generators: Sequence[torch.Generator] | None,
        *,
        plan: TilePlan | None = None,
        settings: Stage2Settings | None = None,
        hooks: _Hooks | None = None,
        timer: _Timer | None = None,
    ) -> torch.Tensor:
        """The reference's stage 2 on `cond_img` [B,3,H,W] in [0,1] -> decoded image [B,3,H,W] (about [-1,1]).

        Random draws, in the reference's order: x_T, noise augmentation, then per step (guidance targets and)
        the step noise; from `generators` (one per item) or the global RNG when None.
        """
        model = self.models[options.task]
        settings = settings or self.stage2_settings
        plan = plan or TilePlan()
        timer = timer or _Timer(self.device)
        hooks = hooks or _Hooks([None] * cond_img.shape[0], [None] * cond_img.shape[0])
        vae = model.vae
        b, _, h0, w0 = cond_img.shape
        gen: Any = list(generators) if generators is not None else None
        with timer.stage("vae_encode"):
            hooks.progress("vae_encode", 0, 1)
            padded, _ = imageops.pad_to_multiple(cond_img.float(), PAD_MULTIPLE)
            h1, w1 = padded.shape[-2:]
            target = (padded * 2 - 1).to(vae.dtype)
            fid = fidelity_mod.check_fidelity(options.fidelity)
            posterior = None
            if fid > 0 or not plan.vae_encode:
                posterior = self._encode(vae, target, plan.vae_encode)
                c_img = posterior.mode() * vae.scale_factor
                if fid == 0:
                    posterior = None
            else:
                c_img = vae.encode_tiled(target, plan.vae_encode, TileSizes.stride(plan.vae_encode))
            c_img, _ = imageops.pad_to_multiple(c_img.float(), LATENT_PAD_MULTIPLE)
            c_txt = model.text.encode([options.prompt]).expand(b, -1, -1)
            use_cfg = options.cfg_scale != 1.0
            uc_txt = model.text.encode([options.negative_prompt]).expand(b, -1, -1) if use_cfg else None
            x_T = start_latent(self.diffusion, c_img, settings.start_point, gen)
            c_img = augment_condition(self.diffusion, c_img, settings.noise_aug, gen)
            cond = Condition(c_txt, c_img)
            uncond = Condition(uc_txt, c_img) if uc_txt is not None else None
            guidance = None
            sampler = make_sampler(options.sampler, self.diffusion)
            if posterior is not None:
                # The loss is a mean over the latent (or over a window when tiled): scale for that size.
                c, lh, lw = c_img.shape[1:]
                if plan.latent:
                    lh, lw = min(lh, plan.latent.tile), min(lw, plan.latent.tile)
                gs = fidelity_mod.fidelity_to_guidance(
                    fid, (c, lh, lw), max_grad_rescale(sampler, options.steps)
                )
                if gs is not None:
                    guidance = Guidance(
                        _FixedPosterior(vae, posterior),
                        target,
                        gs.scale,
                        loss=gs.loss,
                        space=gs.space,
                        t_start=gs.t_start,
                        t_stop=gs.t_stop,
                        repeat=gs.repeat,
                    )
            hooks.progress("vae_encode", 1, 1)
        hooks.check("before sampling")
        with timer.stage("sampler"):
            hooks.progress("sampler", 0, options.steps)
            z = sample(
                self._denoiser(model),
                sampler,
                x_T,
                cond,
                uncond,
                options.steps,
                options.cfg_scale,
                settings.strength,
                guidance=guidance,
                tiling=plan.latent,
                progress=hooks.progress,
                should_cancel=hooks.all_canceled,
                generator=gen,
                rescale_cfg=settings.rescale_cfg,
            )
        hooks.check("before decoding")
        with timer.stage("vae_decode"):
            hooks.progress("vae_decode", 0, 1)
            z = z[..., : h1 // 8, : w1 // 8]
            if plan.vae_decode:
                decoded = vae.decode_tiled(z, plan.vae_decode, TileSizes.stride(plan.vae_decode))
            else:
                decoded = self._graphed("vae_decode", vae, vae.decode, max_numel=GRAPH_MAX_PIXELS * 4 // 64)(
                    z
                )
            decoded = decoded.float()[:, :, :h0, :w0]
            hooks.progress("vae_decode", 1, 1)
        return decoded

    def _encode(self, vae: Any, img: torch.Tensor, tile: int | None) -> DiagonalGaussianDistribution:
        """The VAE posterior of `img` (tiled as `_posterior`; untiled through a CUDA graph once warm)."""
        if tile:
            return _posterior(vae, img, tile)
        moments = self._graphed(
            "vae_encode", vae, lambda x: vae.posterior(x).parameters, max_numel=GRAPH_MAX_PIXELS * 3
        )(img)
        return DiagonalGaussianDistribution(moments)

    def postprocess(
        self,
        decoded: torch.Tensor,
        cond_img: torch.Tensor,
        out_hw: tuple[int, int],
        color_fix: str = "wavelet",
    ) -> torch.Tensor:
        """Reference post-processing: colour fix of (decoded+1)/2 against the stage-1 image, then the
        bicubic-antialias resize to the output size (NOT clamped: `to_uint8` clamps and truncates)."""
        out = apply_color_fix(color_fix, (decoded.float() + 1) / 2, cond_img.float())
        if tuple(out.shape[-2:]) != tuple(out_hw):
            out = imageops.resize_bicubic_aa(out, out_hw)
        return out


# ----------------------------------------------------------------------------------------------------
# presets

STAGE2_SETTINGS: dict[str, Stage2Settings] = {
    "v1": Stage2Settings(),
    "v2": Stage2Settings(),
    "v2.1": Stage2Settings(),
}

# Official sampling defaults per version (v1: its release's `inference.py`; v2/v2.1: the README commands of
# XPixelGroup/DiffBIR; see docs/model.md). v2.1's
# `edm_dpm++_3m_sde` sampler is not offered here; "dpmpp" (DPM-Solver++) is the closest, at the same 10 steps.
OFFICIAL_SAMPLING: dict[str, dict[str, Any]] = {
    "v1": {
        "sampler": "spaced",
        "steps": 50,
        "cfg_scale": 1.0,  # the v1 release sampled without CFG (cfg_scale=1.0, empty prompts)
        "prompt": "",
        "negative_prompt": OFFICIAL_DEFAULT_NEGATIVE_PROMPT,
    },
    "v2": {
        "sampler": "spaced",
        "steps": 50,
        "cfg_scale": 4.0,
        "prompt": "",
        "negative_prompt": OFFICIAL_DEFAULT_NEGATIVE_PROMPT,
    },
    "v2.1": {
        "sampler": "dpmpp",
        "steps": 10,
        "cfg_scale": 8.0,
        "prompt": OFFICIAL_V21_POSITIVE_PROMPT,
        "negative_prompt": OFFICIAL_V21_NEGATIVE_PROMPT,
    },
}


def default_options(version: str, task: str, **overrides: Any) -> RestoreOptions:
    """`RestoreOptions` with the official sampling defaults of `version` (sampler, steps, cfg, prompts) and
    the README's upscale (4 for sr, 1 for face/denoise); `overrides` win. `fidelity` keeps this service's
    default: the official default is no guidance, i.e. fidelity 0."""
    if version not in OFFICIAL_SAMPLING:
        raise InvalidInputError(f"unknown version {version!r}; expected one of {sorted(OFFICIAL_SAMPLING)}")
    if task not in TASKS:
        raise InvalidInputError(f"unknown task {task!r}; expected one of {TASKS}")
    values = {
        "task": task,
        "upscale": 4.0 if task == "sr" else 1.0,
        **OFFICIAL_SAMPLING[version],
        **overrides,
    }
    return RestoreOptions(**values)


# Config presets official files can be read with (`from_preset(files_config=...)`).
FILES_CONFIGS = ("full", "tiny")

# Stage-1 net kind per version and task (reference README, "Which stage-1 model goes with which version").
STAGE1_KINDS: dict[str, dict[str, str]] = {
    "v1": {"sr": "swinir", "denoise": "swinir", "face": "swinir"},
    "v2": {"sr": "bsrnet", "denoise": "scunet", "face": "swinir"},
    "v2.1": {"sr": "swinir", "denoise": "swinir", "face": "swinir"},
}


def _tiny_stage1(version: str, task: str) -> Stage1Net:
    from model.stage1 import build_stage1

    return build_stage1(STAGE1_KINDS[version][task], preset="tiny", device="cpu")


def converted_cache_path(weights_dir: str | Path | None, version: str, controlnet_name: str) -> Path:
    """Where `python -m model convert` writes the converted ControlLDM of a (version, controlnet)."""
    from model import weights

    root = Path(weights_dir) if weights_dir is not None else weights.default_weights_dir()
    return root / "converted" / f"controlldm-{version}-{controlnet_name}.safetensors"


def _load_full(
    version: str,
    tasks: Sequence[str],
    weights_dir: str | Path | None,
    device: torch.device,
    dtype: torch.dtype,
    files_config: str = "full",
) -> tuple[dict[str, ControlLDM], dict[str, Stage1Net]]:
    """Official files of `version` for `tasks`; one SD copy shared by every ControlNet (v1 has two).
    `files_config` is the config preset the files are read with (see `from_preset`)."""
    from model import weights
    from model.errors import WeightsMissingError
    from model.stage1 import load_stage1

    needed = {task: weights.required(version, task) for task in tasks}
    names = list(dict.fromkeys(w.name for files in needed.values() for w in files.values()))
    try:
        paths = weights.resolve_names(names, weights_dir, version=version)
    except WeightsMissingError as exc:
        # Files the converted cache replaces are not needed when the cache is there.
        paths = _resolve_with_cache(exc, needed, version, weights_dir)
    models: dict[str, ControlLDM] = {}
    by_controlnet: dict[str, ControlLDM] = {}
    nets: dict[str, Stage1Net] = {}
    for task in tasks:
        files = needed[task]
        cn = files["controlnet"].name
        if cn not in by_controlnet:
            cache = converted_cache_path(weights_dir, version, cn)
            if by_controlnet:  # share UNet/VAE/text with the first model; only the ControlNet differs
                first = next(iter(by_controlnet.values()))
                other = _load_cldm(cache, paths, files, version, device, dtype, files_config)
                by_controlnet[cn] = ControlLDM(
                    first.cfg, first.diffusion, first.unet, other.controlnet, first.vae, first.text
                )
            else:
                by_controlnet[cn] = _load_cldm(cache, paths, files, version, device, dtype, files_config)
        models[task] = by_controlnet[cn]
        s1 = files["stage1"]
        nets[task] = load_stage1(
            s1.stage1_kind or STAGE1_KINDS[version][task], paths[s1.name], preset=files_config
        )
    return models, nets


def _load_cldm(
    cache: Path,
    paths: Mapping[str, Path],
    files: Mapping[str, Any],
    version: str,
    device: torch.device,
    dtype: torch.dtype,
    files_config: str = "full",
) -> ControlLDM:
    from model import loading

    if cache.is_file():
        log.info("loading converted cache %s", cache)
        return loading.load_converted(cache, device=device, dtype=dtype)
    log.info("loading official checkpoints (run `python -m model convert` once for faster starts)")
    return loading.load_official(
        paths[files["sd"].name],
        paths[files["controlnet"].name],
        files_config,
        version,
        device=device,
        dtype=dtype,
    )


def _resolve_with_cache(
    exc: Exception, needed: Mapping[str, Mapping[str, Any]], version: str, weights_dir: str | Path | None
) -> dict[str, Path]:
    from model import weights
    from model.errors import WeightsMissingError

    assert isinstance(exc, WeightsMissingError)
    names: list[str] = []
    for files in needed.values():
        cached = converted_cache_path(weights_dir, version, files["controlnet"].name).is_file()
        names += [w.name for role, w in files.items() if not (cached and role in ("sd", "controlnet"))]
    return weights.resolve_names(list(dict.fromkeys(names)), weights_dir, version=version)


def convert_version(
    version: str, weights_dir: str | Path | None = None, files_config: str = "full"
) -> list[Path]:
    """Write the converted safetensors cache of every ControlNet of `version` (what `python -m model convert`
    does); later `from_preset("full")` starts read these instead of the pickles. `files_config` as in
    `DiffBIRPipeline.from_preset`."""
    from model import loading, weights

    written: list[Path] = []
    done: set[str] = set()
    for task in TASKS:
        files = weights.required(version, task)
        cn = files["controlnet"].name
        if cn in done:
            continue
        done.add(cn)
        paths = weights.resolve_names([files["sd"].name, cn], weights_dir, version=version)
        ldm = loading.load_official(paths[files["sd"].name], paths[cn], files_config, version)
        written.append(loading.save_converted(ldm, converted_cache_path(weights_dir, version, cn)))
        del ldm
    return written
