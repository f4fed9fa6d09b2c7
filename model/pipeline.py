"""`DiffBIRPipeline`: the two DiffBIR stages end to end, loaded once and reused for every request.

`restore` reads like the paper: stage 1 removes the degradation (SwinIR / BSRNet / SCUNet), stage 2
regenerates detail with SD 2.1 steered by IRControlNet (condition = VAE latent of the stage-1 image),
optionally pulled towards the stage-1 result by latent image guidance (Alg. 1, `fidelity`), then the colour
is fixed against stage 1 and the result is resized to the requested size. This file is that flow plus the
batching around it; the pieces it calls own the rest: options and vocabularies (`options.py`), official
per-version settings (`presets.py`), loading (`loaders.py`), sizes and memory (`planning.py`), speed
(`acceleration.py`), progress/cancel/timings (`tracking.py`) and the maths (`sampling/`, `guidance.py`, ...).

Stage-2 conventions follow the reference exactly (`stage2` / `postprocess`, pinned by the golden fixtures):
zero-pad to multiples of 64, `*2-1`, VAE mode*0.18215, uncond = negative prompt + the SAME c_img, crop back,
wavelet fix, bicubic-antialias resize, uint8 truncation.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from model import fidelity as fidelity_mod
from model import imageops
from model.acceleration import Acceleration, Accelerator
from model.cldm import Condition, ControlLDM
from model.colorfix import apply_color_fix
from model.errors import CanceledError, InvalidInputError, ModelError, OutOfMemoryError
from model.graphs import CudaGraphs
from model.guidance import Guidance
from model.inputs import check_pixels, output_size, prepare_image
from model.loaders import load_nets, resolve_device, resolve_dtype
from model.options import (
    STAGES,
    CancelFn,
    ProgressFn,
    RestoreOptions,
    RestoreResult,
    Stage2Settings,
    random_seed,
)
from model.planning import (
    FULL_MIN_SHORT_EDGE,
    FULL_TILES,
    LATENT_DOWNSCALE,
    LATENT_PAD_MULTIPLE,
    PAD_MULTIPLE,
    TINY_MIN_SHORT_EDGE,
    TINY_TILES,
    NetSizes,
    Planner,
    TilePlan,
    TileSizes,
    default_budget,
)
from model.presets import STAGE2_SETTINGS, resolve_options
from model.sampling import (
    Sampler,
    Tiling,
    augment_condition,
    make_sampler,
    max_grad_rescale,
    sample,
    start_latent,
)
from model.schedule import Diffusion, make_diffusion
from model.stage1 import Stage1Net
from model.tiled_vae import decode_tiled_gn, encode_tiled_gn, posterior_tiled_gn
from model.tiling import num_tiles
from model.tracking import BatchHooks, StageTimer
from model.vae import VAE
from model.weights import UNALIGNED_FACE, version_tasks

if TYPE_CHECKING:  # the face tools import OpenCV and facexlib: only when the unaligned_face task is loaded
    from model.faces.unaligned import FaceTools

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 4096 * 4096

# One prepared image of a batch: (pixels, conversions applied, its resolved options, output size).
Prepared = tuple[np.ndarray, list[str], RestoreOptions, tuple[int, int]]


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's CUDA OOM, or the RuntimeError other allocators raise with the same words."""
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


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
        acceleration: Acceleration | None = None,
        graphs: CudaGraphs | None = None,
        faces: FaceTools | None = None,
    ) -> None:
        """`acceleration`: the speed switches (default: channels_last and CUDA graphs on CUDA, no compile).
        `graphs`: a graph cache of the caller's (tests bring one with a host capture). `faces`: the detector
        (and parser) of the unaligned_face task, which also needs the face and sr models."""
        missing = [t for t in models if t not in stage1]
        if missing or not models:
            raise ModelError(f"pipeline needs a stage-1 net and a ControlLDM per task; missing for {missing}")
        if faces is not None and not {"face", "sr"} <= set(models):
            raise ModelError("the unaligned_face task needs the face and sr models loaded too")
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
        self.planner = Planner(tiles, min_short_edge)
        any_model = next(iter(self.models.values()))
        self.dtype = any_model.dtype
        diff = any_model.diffusion
        self.diffusion: Diffusion = make_diffusion(
            zero_snr=diff.zero_snr, parameterization=diff.parameterization
        )
        self.accel = Accelerator(
            self.models, self.stage1, self.device, acceleration or Acceleration(), graphs
        )
        self.faces = faces

    @property
    def tasks(self) -> tuple[str, ...]:
        return (*self.models, UNALIGNED_FACE) if self.faces is not None else tuple(self.models)

    @property
    def graphs(self) -> CudaGraphs | None:
        """The CUDA graph cache (None when graphs are off); the worker exports its stats."""
        return self.accel.graphs

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
        acceleration: Acceleration | None = None,
        seed: int = 0,
        files_config: str = "full",
    ) -> DiffBIRPipeline:
        """`full`: the official weights of `version` (`tasks`, default all it runs) from `weights_dir`,
        through the converted safetensors cache when `python -m model convert` wrote one. `tiny`: random
        weights with the tiny configs -- a smoke-test model that does NOT restore anything.
        `device=None` picks CUDA if available; `precision=None` picks fp16 on CUDA, fp32 on CPU.
        `files_config="tiny"` (preset `full`) reads official-layout files of the tiny configs (tests), with
        the tiny diffusion size and tile windows; see `model.loaders.load_nets`."""
        dev = resolve_device(device)
        dtype = resolve_dtype(precision, dev)
        tasks = tuple(tasks or version_tasks(version))
        small = preset == "tiny" or files_config == "tiny"
        faces = None
        if UNALIGNED_FACE in tasks:  # it runs on the face and sr models, plus a detector and a parser
            from model.faces.unaligned import load_face_tools

            faces = load_face_tools(preset, version, weights_dir, dev, small=small)
            tasks = tuple(dict.fromkeys([*(t for t in tasks if t != UNALIGNED_FACE), "face", "sr"]))
        models, nets = load_nets(
            preset, version, tasks, dev, dtype, weights_dir=weights_dir, files_config=files_config, seed=seed
        )
        return cls(
            models,
            nets,
            version=version,
            preset=preset,
            device=dev,
            max_pixels=max_pixels,
            memory_budget_bytes=memory_budget_bytes,
            min_short_edge=TINY_MIN_SHORT_EDGE if small else FULL_MIN_SHORT_EDGE,
            stage2_settings=STAGE2_SETTINGS[version],
            tiles=TINY_TILES if small else FULL_TILES,
            acceleration=acceleration,
            faces=faces,
        )

    # ---- public API --------------------------------------------------------------------------------------

    def resolve(self, options: RestoreOptions) -> RestoreOptions:
        """`options` as this pipeline runs them: unset fields take the defaults of its weights version (and
        its stage-2 settings), an unset seed a random one; validated."""
        return resolve_options(options, self.version, self.stage2_settings).validate()

    def sampler_steps(self, options: RestoreOptions) -> int:
        """How many steps the sampler of (resolved) `options` runs: the progress total of the sampler stage
        (upstream DDIM can take one more than `steps`)."""
        sampler = make_sampler(str(options.sampler), self.diffusion, options.sampler_params())
        sampler.set_timesteps(int(options.steps or 0), device="cpu")
        return sampler.num_steps

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

        Returns one entry per image: a RestoreResult or the exception for that image (bad input, canceled,
        `OutOfMemoryError`). A canceled item is finished with its batch and discarded; the batch stops only
        when all are canceled. Seeds are per image (`torch.Generator` each), so an image gives the same result
        alone or in a batch.
        """
        n = len(images)
        if len(options_list) != n:
            raise InvalidInputError(f"{n} images but {len(options_list)} options")
        progresses = list(progresses) if progresses is not None else [None] * n
        cancels = list(cancels) if cancels is not None else [None] * n
        results: list[RestoreResult | Exception | None] = [None] * n
        groups: dict[tuple[Any, ...], list[int]] = {}
        prepared: dict[int, Prepared] = {}
        for i, (image, options) in enumerate(zip(images, options_list, strict=True)):
            try:
                options = self.resolve(options)
                if options.task not in self.tasks:
                    loaded = list(self.tasks)
                    raise InvalidInputError(f"task {options.task!r} is not loaded (loaded: {loaded})")
                if options.task == UNALIGNED_FACE:
                    results[i] = self._restore_unaligned(image, options, progresses[i], cancels[i])
                    continue
                prep = prepare_image(image, self.max_pixels)
                out_hw = output_size(*prep.size, options.upscale, self.max_pixels)
                # Stage 2 runs with the short side raised to `min_short_edge`: a thin strip (8 x 2000 px)
                # would become a huge image there, so the limit applies to that size too.
                check_pixels(
                    *self.planner.diffusion_size(out_hw),
                    self.max_pixels,
                    f"stage-2 (short side raised to {self.min_short_edge} px)",
                )
                seed = options.seed if options.seed is not None else random_seed()
                options = dataclasses.replace(options, seed=seed)
            except ModelError as exc:
                results[i] = exc
                continue
            prepared[i] = (prep.image, prep.conversions, options, out_hw)
            groups.setdefault((prep.image.shape, options.batch_key()), []).append(i)
        for (shape, options), members in groups.items():
            for chunk in self._chunks(members, (shape[0], shape[1]), options):
                self._run_group(chunk, options, prepared, progresses, cancels, results)
        return [r if r is not None else ModelError("internal error: no result") for r in results]

    def _restore_unaligned(
        self, image: np.ndarray, options: RestoreOptions, progress: ProgressFn | None, cancel: CancelFn | None
    ) -> RestoreResult | Exception:
        """One unaligned_face restore (`model/faces/unaligned.py`); failures come back as the exception."""
        from model.faces.unaligned import restore_unaligned

        assert self.faces is not None
        try:
            return restore_unaligned(
                self.restore_batch, self.faces, image, options, self.max_pixels, progress, cancel
            )
        except ModelError as exc:
            return exc
        except Exception as exc:  # a failure of this image must not lose the others of the batch
            return self._failure(exc, 1)

    # ---- batching and planning ---------------------------------------------------------------------------

    def plan(
        self,
        in_hw: tuple[int, int],
        out_hw: tuple[int, int],
        task: str,
        batch: int,
        cfg: bool,
        options: RestoreOptions | None = None,
    ) -> TilePlan:
        """Tile whatever would not fit the memory budget (byte estimates from sizes; see docs/model.md);
        the tile sizes `options` names win over the automatic choice for their stage."""
        plan = self.planner.plan(in_hw, out_hw, self._net_sizes(task), batch, cfg, self._budget())
        return plan if options is None else requested_tiles(plan, options)

    def _budget(self) -> int:
        if self.memory_budget_bytes is not None:
            return self.memory_budget_bytes
        return default_budget(self.device, self.accel.reserved_bytes)

    def _net_sizes(self, task: str) -> NetSizes:
        cfg = self.models[task].cfg
        net = self.stage1[task]
        return NetSizes(
            elem=torch.finfo(self.dtype).bits // 8,
            unet_width=cfg.unet.model_channels,
            vae_width=cfg.vae.ch,
            stage1_kind=net.kind,
            stage1_scale=net.scale,
        )

    def _chunks(self, members: list[int], in_hw: tuple[int, int], options: RestoreOptions) -> list[list[int]]:
        """Sub-batches of a group that fit the memory budget."""
        out_hw = output_size(*in_hw, options.upscale)
        budget = self._budget()
        cfg = options.cfg_scale != 1.0
        per_item = self.planner.item_bytes(in_hw, out_hw, self._net_sizes(options.task), cfg, budget)
        return self.planner.chunks(members, per_item, budget)

    def _run_group(
        self,
        members: list[int],
        options: RestoreOptions,
        prepared: Mapping[int, Prepared],
        progresses: Sequence[ProgressFn | None],
        cancels: Sequence[CancelFn | None],
        results: list[RestoreResult | Exception | None],
    ) -> None:
        hooks = BatchHooks([progresses[i] for i in members], [cancels[i] for i in members])
        seeds = [int(prepared[i][2].seed or 0) for i in members]
        try:
            images, timings, peak = self._run(
                np.stack([prepared[i][0] for i in members]), options, seeds, prepared[members[0]][3], hooks
            )
        except CanceledError as exc:
            for i in members:
                results[i] = CanceledError(str(exc))
            return
        except Exception as exc:  # one failing group (bad size, CUDA OOM, ...) must not lose the other groups
            error = self._failure(exc, len(members))
            for i in members:
                results[i] = error
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
                    sampler_steps=self.sampler_steps(options),
                    conversions=list(prepared[i][1]),
                    options=prepared[i][2],
                    version=self.version,
                )

    def _failure(self, exc: Exception, items: int) -> Exception:
        """The error to report for a failed group; an OOM frees what it can and becomes `OutOfMemoryError`."""
        if not isinstance(exc, ModelError):
            log.exception("restore failed for %d image(s)", items)
        if not is_out_of_memory(exc):
            return exc
        if self.device.type == "cuda":
            self.accel.release()  # the graphs' pool is memory the next request may need
            torch.cuda.empty_cache()  # leave the allocator usable for the next request
        error = OutOfMemoryError(f"out of memory restoring {items} image(s) on {self.device}: {exc}")
        error.__cause__ = exc
        return error

    # ---- the two stages ----------------------------------------------------------------------------------

    @torch.no_grad()
    def _run(
        self,
        batch: np.ndarray,
        options: RestoreOptions,
        seeds: Sequence[int],
        out_hw: tuple[int, int],
        hooks: BatchHooks,
    ) -> tuple[np.ndarray, dict[str, float], int | None]:
        timer = StageTimer(self.device)
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        total_start = time.perf_counter()
        in_hw = (batch.shape[1], batch.shape[2])
        use_cfg = options.cfg_scale != 1.0
        plan = self.plan(in_hw, out_hw, options.task, len(seeds), use_cfg, options)
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
        decoded = self.stage2(cond_img, options, generators, plan=plan, hooks=hooks, timer=timer)
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
        hooks: BatchHooks | None = None,
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
        tile = plan.stage1_tile
        stride = (plan.stage1_stride or TileSizes.stride(tile)) if tile else 0
        if hooks:
            hooks.progress("stage1", 0, num_tiles(*x.shape[-2:], tile, stride) if tile else 1)
        if tile:
            y = net.forward_tiled(
                x,
                tile,
                stride,
                progress=(lambda d, t: hooks.progress("stage1", d, t)) if hooks else None,
                batch=plan.stage1_batch,
            )
        else:
            y = self.accel.stage1(net)(x)
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
        hooks: BatchHooks | None = None,
        timer: StageTimer | None = None,
    ) -> torch.Tensor:
        """The reference's stage 2 on `cond_img` [B,3,H,W] in [0,1] -> decoded image [B,3,H,W] (about [-1,1]).

        Random draws, in the reference's order: x_T, noise augmentation, then per step (guidance targets and)
        the step noise; from `generators` (one per item) or the global RNG when None.
        """
        options = self.resolve(options)
        model = self.models[options.task]
        settings = settings or options.stage2_settings()
        plan = plan or TilePlan()
        timer = timer or StageTimer(self.device)
        hooks = hooks or BatchHooks.silent(cond_img.shape[0])
        vae = model.vae
        b, _, h0, w0 = cond_img.shape
        gen: Any = list(generators) if generators is not None else None
        with timer.stage("vae_encode"):
            hooks.progress("vae_encode", 0, 1)
            # Conditions: the stage-1 latent (and its posterior, when guidance needs it) and the prompts.
            padded, _ = imageops.pad_to_multiple(cond_img.float(), PAD_MULTIPLE)
            h1, w1 = padded.shape[-2:]
            target = (padded * 2 - 1).to(vae.dtype)
            fid = fidelity_mod.check_fidelity(options.fidelity)
            posterior = None
            if fid > 0 or not plan.vae_encode:
                posterior = self._posterior(vae, target, plan)
                c_img = posterior.mode() * vae.scale_factor
                if fid == 0:
                    posterior = None
            else:
                c_img = encode_tiled_gn(vae, target, plan.vae_encode, keep_bytes=plan.vae_keep_bytes)
            c_img, _ = imageops.pad_to_multiple(c_img.float(), LATENT_PAD_MULTIPLE)
            c_txt = model.text.encode([options.prompt or ""]).expand(b, -1, -1)
            use_cfg = options.cfg_scale != 1.0
            uc_txt = model.text.encode([options.negative_prompt or ""]).expand(b, -1, -1) if use_cfg else None
            # Latents: the start point, then the (optionally noise-augmented) condition.
            x_T = start_latent(self.diffusion, c_img, settings.start_point, gen)
            c_img = augment_condition(self.diffusion, c_img, settings.noise_aug, gen)
            cond = Condition(c_txt, c_img)
            uncond = Condition(uc_txt, c_img) if uc_txt is not None else None
            sampler = make_sampler(str(options.sampler), self.diffusion, options.sampler_params())
            steps = int(options.steps or 0)
            guidance = None
            if posterior is not None:
                guidance = self._guidance(
                    vae, target, posterior, fid, tuple(c_img.shape[1:]), plan, sampler, options
                )
            hooks.progress("vae_encode", 1, 1)
        hooks.check("before sampling")
        with timer.stage("sampler"):
            hooks.progress("sampler", 0, self.sampler_steps(options))
            z = sample(
                self.accel.denoiser(model),
                sampler,
                x_T,
                cond,
                uncond,
                steps,
                float(options.cfg_scale or 0.0),
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
            z = z[..., : h1 // LATENT_DOWNSCALE, : w1 // LATENT_DOWNSCALE]
            if plan.vae_decode:
                decoded = decode_tiled_gn(vae, z, plan.vae_decode, keep_bytes=plan.vae_keep_bytes)
            else:
                decoded = self.accel.vae_decode(vae)(z)
            decoded = decoded.float()[:, :, :h0, :w0]
            hooks.progress("vae_decode", 1, 1)
        return decoded

    def _posterior(self, vae: VAE, img: torch.Tensor, plan: TilePlan) -> DiagonalGaussianDistribution:
        """The VAE posterior of `img`: tiled with shared GroupNorm statistics (seam-free), or untiled
        through a CUDA graph once warm."""
        if plan.vae_encode:
            return posterior_tiled_gn(vae, img, plan.vae_encode, keep_bytes=plan.vae_keep_bytes)
        return DiagonalGaussianDistribution(self.accel.vae_moments(vae)(img))

    def _guidance(
        self,
        vae: VAE,
        target: torch.Tensor,
        posterior: DiagonalGaussianDistribution,
        fid: float,
        latent_shape: tuple[int, ...],
        plan: TilePlan,
        sampler: Sampler,
        options: RestoreOptions,
    ) -> Guidance | None:
        """Latent image guidance for `fid` (None when it has no effect), on the posterior already computed."""
        # The loss is a mean over the latent (or over a window when tiled): scale for that size.
        c, lh, lw = latent_shape
        if plan.latent:
            lh, lw = min(lh, plan.latent.tile), min(lw, plan.latent.tile)
        gs = fidelity_mod.fidelity_to_guidance(
            fid, (c, lh, lw), max_grad_rescale(sampler, int(options.steps or 0))
        )
        if gs is None:
            return None
        gs = dataclasses.replace(
            gs,
            space=options.guidance_space,
            loss=options.guidance_loss,
            t_start=options.guidance_start,
            t_stop=options.guidance_stop,
            repeat=options.guidance_repeat,
        )
        return Guidance(vae, target, posterior=posterior, **dataclasses.asdict(gs))

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


def requested_tiles(plan: TilePlan, options: RestoreOptions) -> TilePlan:
    """`plan` with the tile windows `options` asks for (px; latent and decoder windows in whole cells). A
    window the caller sized runs one per forward, and VAE tiles wait in host memory: the planner's batch and
    device allowance were sized for its own windows."""
    d = LATENT_DOWNSCALE
    latent = plan.latent
    if options.latent_tile is not None:
        tile = options.latent_tile // d
        stride = options.latent_stride // d if options.latent_stride else TileSizes.stride(tile)
        latent = Tiling(tile, stride)
    return dataclasses.replace(
        plan,
        stage1_tile=options.stage1_tile or plan.stage1_tile,
        stage1_stride=options.stage1_stride if options.stage1_tile else plan.stage1_stride,
        stage1_batch=1 if options.stage1_tile else plan.stage1_batch,
        latent=latent,
        vae_encode=options.vae_encode_tile or plan.vae_encode,
        vae_decode=options.vae_decode_tile // d if options.vae_decode_tile else plan.vae_decode,
        vae_keep_bytes=0 if options.vae_encode_tile or options.vae_decode_tile else plan.vae_keep_bytes,
    )
