"""CUDA graphs for the nets a restore calls again and again: one capture per input shape, then replays.

At 512x512 the UNet + ControlNet step is bound by the host launching ~2,000 kernels one at a time (an H200
measured ~50 ms per step eager, for a few ms of GPU work). A graph launches all of them at once. torch.compile
with mode="reduce-overhead" does the same, but compiles for minutes per shape and recompiles on new shapes;
capturing the eager kernels costs about two forwards. Hand-written because no library offers a shape-keyed
cache of inference graphs for any callable: `torch.cuda.make_graphed_callables` captures backward passes
too and fixes one shape per callable.

Replays read the inputs from static buffers and write a static output, so a call copies its tensors in and
returns a clone of the output: callers never see a buffer the next replay overwrites.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

log = logging.getLogger(__name__)

Key = tuple[Hashable, ...]
Replay = Callable[[], None]


class Capture(Protocol):
    """Records `fn` (which reads static inputs) -> (its static output, a replay that refreshes it)."""

    def __call__(self, fn: Callable[[], Any]) -> tuple[Any, Replay]: ...


@dataclass
class GraphStats:
    """Counters the worker exports as metrics and the benchmark reports."""

    captures: int = 0
    replays: int = 0
    eager_calls: int = 0
    failures: int = 0
    evictions: int = 0
    pool_bytes: int = 0  # memory the captures added to the CUDA cache (held by the graphs' pool)


class CudaCapture:
    """The real capture: warm-up on a side stream (cuDNN autotuning, cuBLAS workspaces and lazy
    initialisation must not happen inside a capture), then `torch.cuda.graph` into one memory pool shared by
    all graphs. Sharing is safe because replays never overlap: each runs to completion on the current stream
    before the caller clones its output, and outputs stay allocated, so a later capture cannot reuse them."""

    def __init__(self, device: torch.device, stats: GraphStats, warmup_runs: int = 1) -> None:
        self.device = device
        self.stats = stats
        self.warmup_runs = warmup_runs
        self._pool: Any = None
        self._stream: torch.cuda.Stream | None = None

    def __call__(self, fn: Callable[[], Any]) -> tuple[Any, Replay]:
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
            # One side stream for every warm-up, so the blocks they cache are reused, not piled up per call.
            self._stream = torch.cuda.Stream(self.device)
        assert self._stream is not None
        reserved = torch.cuda.memory_reserved(self.device)
        main = torch.cuda.current_stream(self.device)
        self._stream.wait_stream(main)
        with torch.cuda.stream(self._stream):
            for _ in range(self.warmup_runs):
                fn()
        main.wait_stream(self._stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            output = fn()
        self.stats.pool_bytes += max(0, torch.cuda.memory_reserved(self.device) - reserved)
        return output, graph.replay


@dataclass
class _Graph:
    inputs: list[torch.Tensor]
    output: Any
    replay: Replay


@dataclass
class GraphCache:
    """`fn(*tensors, **static)` through CUDA graphs, one per (tensor shapes/dtypes, static values).

    - `min_uses`: capture on the n-th call with a key (1 = at once: right for the sampler's denoiser, called
      once per step; 2 for nets run once per request, so one-off image sizes stay eager).
    - `max_graphs`: least recently used graphs beyond this are dropped.
    - `max_numel`: inputs larger than this (elements of the first tensor) always run eagerly, so a one-off
      huge image does not pin its activations in the graph pool.
    Runs eagerly, never capturing, while autograd records (guidance differentiates through the VAE decoder).
    A shape whose capture fails is logged once and then always run eagerly.
    """

    fn: Callable[..., Any]
    capture: Capture
    stats: GraphStats
    name: str = "graph"
    min_uses: int = 1
    max_graphs: int = 8
    max_numel: int | None = None
    _graphs: OrderedDict[Key, _Graph] = field(default_factory=OrderedDict)
    _seen: Counter[Key] = field(default_factory=Counter)
    _failed: set[Key] = field(default_factory=set)

    def __call__(self, *tensors: torch.Tensor, **static: Any) -> Any:
        key = self._key(tensors, static)
        graph = self._graphs.get(key)
        if graph is None:
            graph = self._maybe_capture(key, tensors, static)
            if graph is None:
                self.stats.eager_calls += 1
                return self.fn(*tensors, **static)
        else:
            self._graphs.move_to_end(key)
        for buffer, tensor in zip(graph.inputs, tensors, strict=True):
            buffer.copy_(tensor)
        graph.replay()
        self.stats.replays += 1
        return _clone(graph.output)

    def __len__(self) -> int:
        return len(self._graphs)

    def clear(self) -> None:
        self._graphs.clear()
        self._seen.clear()

    def _key(self, tensors: tuple[torch.Tensor, ...], static: dict[str, Any]) -> Key:
        shapes = tuple((tuple(t.shape), t.dtype, t.device) for t in tensors)
        return (
            shapes,
            tuple(sorted((k, _hashable(v)) for k, v in static.items())),
            torch.is_inference_mode_enabled(),
        )

    def _maybe_capture(
        self, key: Key, tensors: tuple[torch.Tensor, ...], static: dict[str, Any]
    ) -> _Graph | None:
        if torch.is_grad_enabled() or key in self._failed:
            return None
        if self.max_numel is not None and tensors and tensors[0].numel() > self.max_numel:
            return None
        if len(self._seen) > 4096:  # distinct shapes seen once each: forget them rather than grow forever
            self._seen.clear()
        self._seen[key] += 1
        if self._seen[key] < self.min_uses:
            return None
        # Contiguous buffers: inputs may be expanded views (stride 0), which cannot be copied into.
        with torch.inference_mode(False):
            inputs = [torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in tensors]
        for buffer, tensor in zip(inputs, tensors, strict=True):
            buffer.copy_(tensor)
        try:
            output, replay = self.capture(lambda: self.fn(*inputs, **static))
        except torch.cuda.OutOfMemoryError:
            # Transient (other work holds the memory): run eagerly now and try to capture again next time.
            log.warning("no GPU memory to capture %s for %s; running it eagerly", self.name, key[0])
            return None
        except Exception:  # any other failure: this shape stays eager; the request itself must not fail
            self._failed.add(key)
            self.stats.failures += 1
            log.warning(
                "CUDA graph capture of %s failed for %s; running it eagerly", self.name, key[0], exc_info=True
            )
            return None
        self.stats.captures += 1
        graph = _Graph(inputs, output, replay)
        self._graphs[key] = graph
        while len(self._graphs) > self.max_graphs:
            self._graphs.popitem(last=False)
            self.stats.evictions += 1
        log.info("captured a CUDA graph of %s for %s", self.name, key[0])
        return graph


class CudaGraphs:
    """The graph caches of one pipeline: one capture backend, one memory pool, shared counters."""

    def __init__(self, device: torch.device, capture: Capture | None = None, max_graphs: int = 8) -> None:
        self.stats = GraphStats()
        self.capture = capture if capture is not None else CudaCapture(device, self.stats)
        self.max_graphs = max_graphs
        self._caches: dict[tuple[str, int], GraphCache] = {}

    def cache(
        self,
        name: str,
        owner: object,
        fn: Callable[..., Any],
        *,
        min_uses: int = 1,
        max_numel: int | None = None,
    ) -> GraphCache:
        """The cache of `fn` for `owner` (one per net instance), made on first use."""
        slot = (name, id(owner))
        if slot not in self._caches:
            self._caches[slot] = GraphCache(
                fn,
                self.capture,
                self.stats,
                name=name,
                min_uses=min_uses,
                max_graphs=self.max_graphs,
                max_numel=max_numel,
            )
        return self._caches[slot]

    @property
    def num_graphs(self) -> int:
        # A snapshot: the metrics endpoint reads this from its own thread while jobs add caches.
        return sum(len(c) for c in tuple(self._caches.values()))

    def clear(self) -> None:
        """Drop every graph (their pool goes back to the allocator once the graphs are gone)."""
        for cache in self._caches.values():
            cache.clear()
        self.stats.pool_bytes = 0


def _hashable(value: Any) -> Hashable:
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, torch.Tensor):
        raise TypeError("static arguments of a CUDA graph must be plain values, not tensors")
    return value


def _clone(output: Any) -> Any:
    if isinstance(output, torch.Tensor):
        return output.clone()
    if isinstance(output, (list, tuple)):
        return type(output)(_clone(o) for o in output)
    return output
