"""How the nets run fast on a GPU: `Acceleration` (the switches) and `Accelerator` (their wiring).

None of it changes a number: channels_last, CUDA graphs and torch.compile give the eager results (graphs are
checked bit-exact on the CPU with a host capture, and against eager on an H200 by benchmarks/gpu.py). The
pipeline asks the accelerator for each net call (`denoiser`, `stage1`, `vae_moments`, `vae_decode`) and
gets the fastest form that is safe for that call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
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
    """

    compile: bool = False
    compile_sizes: Collection[tuple[int, int]] | None = None
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

        def compiled(mod: torch.nn.Module) -> Any:
            if id(mod) not in done:
                done[id(mod)] = torch.compile(mod, dynamic=False)
            return done[id(mod)]

        return {
            id(m): ControlLDM(m.cfg, m.diffusion, compiled(m.unet), compiled(m.controlnet), m.vae, m.text)
            for m in self._models
        }
