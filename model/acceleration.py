"""How the nets run fast on a GPU: `Acceleration` (the switches) and `Accelerator` (their wiring).

None of it changes a number: channels_last, CUDA graphs and torch.compile give the eager results (graphs are
checked bit-exact on the CPU with a host capture, and against eager on an H200 by benchmarks/gpu.py). The
pipeline asks the accelerator for each net call (`denoiser`, `stage1`, `vae_moments`, `vae_decode`) and
gets the fastest form that is safe for that call.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from model.cldm import Condition, ControlLDM
from model.errors import InvalidInputError
from model.graphs import CudaGraphs
from model.planning import latent_size
from model.sampling.cfg import Denoiser
from model.stage1 import Stage1Net
from model.vae import VAE

log = logging.getLogger(__name__)

# torch.compile recompiles per input shape (batch rows x latent size); see `Accelerator._compile`.
COMPILE_RECOMPILE_LIMIT = 64
# Stage-1 and VAE calls on images up to this many output pixels (per batch) may be kept as CUDA graphs;
# larger ones run eagerly so a one-off big image does not pin its activations in the graph pool.
GRAPH_MAX_PIXELS = 1024 * 1024


@dataclass(frozen=True)
class Acceleration:
    """The speed switches of a pipeline (None = on exactly when the device is CUDA).

    `cuda_graphs`: replay the per-step nets (and warm stage-1 / VAE shapes) as CUDA graphs.
    `compile`: torch.compile the UNet and ControlNet, for every shape or, with `compile_sizes`, only for
    diffusion sizes (H, W) in pixels in that set (multiples of 64; 512x512 also covers tiled windows);
    other sizes run the eager nets, so an unusual size never waits a minute for a compilation.
    `compile_dynamic_batch`: the batch axis is symbolic (`torch._dynamo.mark_dynamic`), so every batch of
    two or more rows (CFG, image batches, tile micro-batches) shares ONE compilation; batch 1 gets its own,
    because dynamo specialises sizes 0 and 1. Off: one compilation per batch size.
    `compile_cache`: a file of torch.compile artifacts (`torch.compiler.save_cache_artifacts`): loaded
    before the first compilation when it exists and written by `Accelerator.save_compile_cache` (the worker
    does after its warm-up), so a new replica on the same image and GPU skips the compilations.
    """

    compile: bool = False
    compile_sizes: Collection[tuple[int, int]] | None = None
    compile_dynamic_batch: bool = True
    compile_cache: str | None = None
    cuda_graphs: bool | None = None
    channels_last: bool | None = None
    compile_latents: frozenset[tuple[int, int]] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        sizes = self.compile_sizes
        if sizes is not None:
            sizes = frozenset((int(h), int(w)) for h, w in sizes)
            object.__setattr__(self, "compile_sizes", sizes)
        latents = None if sizes is None else frozenset(latent_size(h, w) for h, w in sizes)
        object.__setattr__(self, "compile_latents", latents)


class Accelerator:
    """One pipeline's accelerated net calls: channels_last nets, compiled twins, the CUDA graph cache."""

    def __init__(
        self,
        models: Mapping[str, ControlLDM],
        stage1: Mapping[str, Stage1Net],
        device: torch.device,
        settings: Acceleration,
        graphs: CudaGraphs | None = None,
    ) -> None:
        """`graphs`: a graph cache of the caller's (tests bring one with a host capture); it replaces the one
        `settings.cuda_graphs` would make."""
        self.settings = settings
        self.device = device
        self._models = list({id(m): m for m in models.values()}.values())
        cuda = device.type == "cuda"
        channels_last = cuda if settings.channels_last is None else settings.channels_last
        if channels_last:
            for m in self._models:
                for part in (m.unet, m.controlnet, m.vae):
                    part.to(memory_format=torch.channels_last)
            for net in stage1.values():
                net.to(memory_format=torch.channels_last)
        self.compile_cache_loaded = False
        if settings.compile and settings.compile_cache:
            self.compile_cache_loaded = load_compile_cache(Path(settings.compile_cache))
        self._compiled: dict[int, ControlLDM] = self._compile() if settings.compile else {}
        use_graphs = cuda if settings.cuda_graphs is None else settings.cuda_graphs
        if use_graphs and not cuda and graphs is None:
            raise InvalidInputError("cuda_graphs=True needs a CUDA device")
        self.graphs: CudaGraphs | None = graphs or (CudaGraphs(device) if use_graphs else None)

    @property
    def reserved_bytes(self) -> int:
        """Memory the graphs' pool holds: cached by the allocator but not free for anything else."""
        return self.graphs.stats.pool_bytes if self.graphs is not None else 0

    def release(self) -> None:
        """Drop the graphs (their pool is memory the next request may need), e.g. after an OOM."""
        if self.graphs is not None:
            self.graphs.clear()

    def save_compile_cache(self) -> int:
        """Write this process's compile artifacts to `settings.compile_cache` (0 bytes when compile or the
        cache is off, or nothing was compiled yet); returns the bytes written."""
        if not (self.settings.compile and self.settings.compile_cache):
            return 0
        return save_compile_cache(Path(self.settings.compile_cache))

    def net_for(self, model: ControlLDM, x: torch.Tensor) -> ControlLDM:
        """The compiled twin of `model` when this latent size is one to compile, else `model` itself."""
        twin = self._compiled.get(id(model))
        if twin is None:
            return model
        latents = self.settings.compile_latents
        if latents is not None and tuple(x.shape[-2:]) not in latents:
            return model
        return twin

    def denoiser(self, model: ControlLDM) -> Denoiser:
        """The sampler's model call (compiled or not by size), captured once per shape and replayed at every
        step."""
        if self.graphs is None:
            return lambda x, t, cond, strength: self.net_for(model, x)(x, t, cond, strength)
        graphed = self.graphs.cache(
            "denoiser",
            model,
            lambda x, t, c_txt, c_img, strength: self.net_for(model, x)(
                x, t, Condition(c_txt, c_img), strength
            ),
            min_uses=1,
        )
        return lambda x, t, cond, strength: graphed(x, t, cond.c_txt, cond.c_img, strength=strength)

    def stage1(self, net: Stage1Net) -> Callable[[torch.Tensor], torch.Tensor]:
        """The untiled stage-1 net, graphed from a shape's second call on (a large one-off stays eager)."""
        return self._graphed("stage1", net, net, max_numel=GRAPH_MAX_PIXELS * 3 // net.scale**2)

    def vae_moments(self, vae: VAE) -> Callable[[torch.Tensor], torch.Tensor]:
        """The untiled VAE posterior's moments (graphed like `stage1`)."""
        return self._graphed(
            "vae_encode", vae, lambda x: vae.posterior(x).parameters, max_numel=GRAPH_MAX_PIXELS * 3
        )

    def vae_decode(self, vae: VAE) -> Callable[[torch.Tensor], torch.Tensor]:
        """The untiled VAE decode (graphed like `stage1`)."""
        return self._graphed("vae_decode", vae, vae.decode, max_numel=GRAPH_MAX_PIXELS * 4 // 64)

    def _graphed(
        self, name: str, owner: object, fn: Callable[..., Any], max_numel: int | None = None
    ) -> Callable[..., Any]:
        if self.graphs is None:
            return fn
        return self.graphs.cache(name, owner, fn, min_uses=2, max_numel=max_numel)

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

        dynamic_batch = self.settings.compile_dynamic_batch

        def compiled(mod: torch.nn.Module) -> Any:
            if id(mod) not in done:
                twin = torch.compile(mod, dynamic=False)
                done[id(mod)] = DynamicBatch(twin) if dynamic_batch else twin
            return done[id(mod)]

        return {
            id(m): ControlLDM(m.cfg, m.diffusion, compiled(m.unet), compiled(m.controlnet), m.vae, m.text)
            for m in self._models
        }


class DynamicBatch(torch.nn.Module):
    """A compiled net whose inputs get their batch axis marked dynamic before each call, so one compilation
    serves every batch size >= 2 (see `Acceleration.compile_dynamic_batch`). Hand-written because
    torch.compile has no switch for "only the batch axis": `dynamic=True` would make the spatial sizes
    symbolic too and cost kernel quality; `mark_dynamic` per input is PyTorch's documented way."""

    def __init__(self, compiled: Any) -> None:
        super().__init__()
        self.compiled = compiled

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        for value in (*args, *kwargs.values()):
            _mark_batch(value)
        return self.compiled(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:  # dtype, config, ... of the wrapped net (ControlLDM reads `unet.dtype`)
            return getattr(self._modules["compiled"], name)


def _mark_batch(value: Any) -> None:
    if isinstance(value, torch.Tensor):
        if value.ndim and value.shape[0] > 1:  # size 1 is specialised by dynamo whatever the mark says
            torch._dynamo.mark_dynamic(value, 0)
    elif isinstance(value, (tuple, list)):
        for item in value:
            _mark_batch(item)


def load_compile_cache(path: Path) -> bool:
    """Load saved torch.compile artifacts into this process's caches (before compiling); False when the file
    is missing or unreadable (then everything compiles as usual)."""
    if not path.is_file():
        log.info("no compile cache at %s: compiling from scratch", path)
        return False
    try:
        info = torch.compiler.load_cache_artifacts(path.read_bytes())
    except Exception:  # a stale or foreign file must never keep a worker from starting
        log.warning("compile cache %s could not be loaded; compiling from scratch", path, exc_info=True)
        return False
    log.info("loaded compile cache %s (%s)", path, info)
    return info is not None


def save_compile_cache(path: Path) -> int:
    """Write the artifacts of everything compiled (or loaded) in this process to `path`, atomically (a
    replica reading it at the same time sees the old or the new file); returns the bytes written."""
    saved = torch.compiler.save_cache_artifacts()
    if saved is None:
        return 0
    data, _ = saved
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    log.info("saved %d bytes of compile artifacts to %s", len(data), path)
    return len(data)
