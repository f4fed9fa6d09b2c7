"""The CUDA graph cache's bookkeeping, on the CPU.

`HostCapture` keeps a graph's contract without a GPU: the output tensors are allocated once at capture and a
replay recomputes `fn` from the SAME static input buffers and writes into those outputs. A cache that forgot
to copy an input in, returned a buffer a later replay overwrites, or mixed up keys gives wrong numbers here
exactly as it would on a GPU. The real capture (`CudaCapture`) is checked against eager outputs by
`benchmarks/gpu.py`, which records the difference in its results.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch

from model.acceleration import COMPILE_RECOMPILE_LIMIT, Acceleration, DynamicBatch
from model.errors import InvalidInputError
from model.graphs import CudaGraphs, GraphCache, GraphStats
from model.options import RestoreOptions
from model.pipeline import DiffBIRPipeline


@pytest.fixture(autouse=True)
def _inference() -> Iterator[None]:
    """Graphs serve inference only (the sampler runs under no_grad); grad mode always runs eagerly."""
    with torch.no_grad():
        yield


class HostCapture:
    def __init__(self) -> None:
        self.captures = 0

    def __call__(self, fn: Callable[[], Any]) -> tuple[Any, Callable[[], None]]:
        self.captures += 1
        output = fn()

        def replay() -> None:
            fresh = fn()
            if isinstance(output, torch.Tensor):
                output.copy_(fresh)
            else:
                for dst, src in zip(output, fresh, strict=True):
                    dst.copy_(src)

        return output, replay


def affine(a: torch.Tensor, b: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    return a * scale + b


def _cache(fn: Callable[..., Any] = affine, **kwargs: Any) -> tuple[GraphCache, HostCapture]:
    capture = HostCapture()
    return GraphCache(fn, capture, GraphStats(), name="test", **kwargs), capture


def test_replays_read_fresh_inputs_and_match_eager() -> None:
    cache, capture = _cache()
    for i in range(5):
        a, b = torch.randn(2, 3), torch.full((2, 3), float(i))
        torch.testing.assert_close(cache(a, b, scale=2.0), affine(a, b, 2.0), rtol=0, atol=0)
    assert capture.captures == 1
    assert cache.stats.captures == 1 and cache.stats.replays == 5 and cache.stats.eager_calls == 0


def test_outputs_are_not_overwritten_by_later_replays() -> None:
    cache, _ = _cache()
    first = cache(torch.ones(4), torch.zeros(4))
    second = cache(torch.full((4,), 3.0), torch.zeros(4))
    assert first.tolist() == [1.0] * 4 and second.tolist() == [3.0] * 4
    second.add_(100)  # a caller writing into its result must not change the graph's buffer
    assert cache(torch.ones(4), torch.ones(4)).tolist() == [2.0] * 4


def test_one_graph_per_shape_dtype_and_static_value() -> None:
    cache, capture = _cache()
    cache(torch.ones(2), torch.ones(2), scale=1.0)
    cache(torch.ones(3), torch.ones(3), scale=1.0)
    cache(torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64), scale=1.0)
    out = cache(torch.ones(2), torch.ones(2), scale=5.0)
    assert out.tolist() == [6.0, 6.0]
    assert capture.captures == 4 and len(cache) == 4
    cache(torch.ones(2), torch.ones(2), scale=1.0)
    assert capture.captures == 4  # seen before: replayed


def test_min_uses_keeps_one_off_shapes_eager() -> None:
    cache, capture = _cache(min_uses=2)
    assert cache(torch.ones(2), torch.ones(2)).tolist() == [2.0, 2.0]
    assert capture.captures == 0 and cache.stats.eager_calls == 1
    cache(torch.ones(2), torch.ones(2))
    assert capture.captures == 1


def test_least_recently_used_graph_is_evicted() -> None:
    cache, capture = _cache(max_graphs=2)
    cache(torch.ones(1), torch.ones(1))
    cache(torch.ones(2), torch.ones(2))
    cache(torch.ones(1), torch.ones(1))  # 1 is now the most recent
    cache(torch.ones(3), torch.ones(3))  # evicts 2
    assert len(cache) == 2 and cache.stats.evictions == 1
    cache(torch.ones(1), torch.ones(1))
    assert capture.captures == 3
    cache(torch.ones(2), torch.ones(2))
    assert capture.captures == 4


def test_failed_capture_falls_back_to_eager_once_and_for_all() -> None:
    def broken(fn: Callable[[], Any]) -> tuple[Any, Callable[[], None]]:
        raise RuntimeError("operation not permitted when stream is capturing")

    cache = GraphCache(affine, broken, GraphStats(), name="test")
    for _ in range(3):
        assert cache(torch.ones(2), torch.ones(2)).tolist() == [2.0, 2.0]
    assert cache.stats.failures == 1 and cache.stats.eager_calls == 3 and len(cache) == 0


def test_out_of_memory_during_capture_is_retried_later() -> None:
    host = HostCapture()
    attempts: list[int] = []

    def tight(fn: Callable[[], Any]) -> tuple[Any, Callable[[], None]]:
        attempts.append(1)
        if len(attempts) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return host(fn)

    cache = GraphCache(affine, tight, GraphStats(), name="test")
    assert cache(torch.ones(2), torch.ones(2)).tolist() == [2.0, 2.0]  # eager this time
    assert cache.stats.failures == 0 and len(cache) == 0
    assert cache(torch.ones(2), torch.full((2,), 3.0)).tolist() == [4.0, 4.0]
    assert host.captures == 1 and len(cache) == 1


def test_grad_mode_stays_eager_and_differentiable() -> None:
    cache, capture = _cache()
    a = torch.ones(2, requires_grad=True)
    with torch.enable_grad():
        out = cache(a, torch.ones(2), scale=3.0)
        (grad,) = torch.autograd.grad(out.sum(), a)
    assert grad.tolist() == [3.0, 3.0] and capture.captures == 0


def test_expanded_inputs_and_size_limit() -> None:
    cache, capture = _cache(max_numel=8)
    row = torch.arange(3.0)
    expanded = row.expand(2, 3)  # stride 0 on the batch axis, like a shared prompt embedding
    with torch.no_grad():
        torch.testing.assert_close(cache(expanded, torch.zeros(2, 3)), expanded.clone())
        assert capture.captures == 1
        cache(torch.ones(3, 3), torch.ones(3, 3))
    assert capture.captures == 1 and cache.stats.eager_calls == 1  # 9 elements > max_numel


def test_tuple_outputs_are_cloned() -> None:
    cache, _ = _cache(lambda a: (a + 1, a * 2))
    first = cache(torch.ones(2))
    second = cache(torch.full((2,), 5.0))
    assert [t.tolist() for t in first] == [[2.0, 2.0], [2.0, 2.0]]
    assert [t.tolist() for t in second] == [[6.0, 6.0], [10.0, 10.0]]


def test_tensor_static_argument_is_refused() -> None:
    cache, _ = _cache()
    with pytest.raises(TypeError, match="plain values"):
        cache(torch.ones(2), torch.ones(2), scale=torch.tensor(1.0))


# ---- the pipeline with graphs ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def eager() -> DiffBIRPipeline:
    return DiffBIRPipeline.from_preset("tiny", version="v2", device="cpu", precision="fp32")


def _sibling(eager: DiffBIRPipeline, **kwargs: Any) -> DiffBIRPipeline:
    """Another pipeline over the same tiny nets (graphs or a memory budget of its own)."""
    return DiffBIRPipeline(
        eager.models,
        eager.stage1,
        version=eager.version,
        preset=eager.preset,
        device=eager.device,
        min_short_edge=eager.min_short_edge,
        tiles=eager.tiles,
        **kwargs,
    )


def _graphed(eager: DiffBIRPipeline) -> tuple[DiffBIRPipeline, HostCapture]:
    capture = HostCapture()
    return _sibling(eager, graphs=CudaGraphs(eager.device, capture=capture)), capture


@pytest.mark.parametrize("fidelity, cfg_scale", [(0.0, 1.0), (0.5, 4.0)])
def test_graphed_pipeline_gives_the_eager_result(
    eager: DiffBIRPipeline, fidelity: float, cfg_scale: float
) -> None:
    pipe, capture = _graphed(eager)
    image = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    options = RestoreOptions(steps=4, seed=3, fidelity=fidelity, cfg_scale=cfg_scale, upscale=4.0)
    want = eager.restore(image, options).image
    first = pipe.restore(image, options).image
    assert pipe.graphs is not None
    stats = pipe.graphs.stats
    # Only the denoiser is captured at once; stage 1 and the VAE wait for a second request of that shape.
    assert capture.captures == 1 and stats.replays == 4
    second = pipe.restore(image, options).image
    assert capture.captures == 4 and stats.failures == 0  # + stage 1, VAE encode, VAE decode
    np.testing.assert_array_equal(first, want)
    np.testing.assert_array_equal(second, want)


def test_graphed_pipeline_tiled_and_batched(eager: DiffBIRPipeline) -> None:
    pipe, capture = _graphed(eager)
    images = [np.random.default_rng(i).integers(0, 256, (40, 40, 3), dtype=np.uint8) for i in range(2)]
    options = [RestoreOptions(steps=2, seed=i, upscale=2.0, cfg_scale=2.0) for i in range(2)]
    eager_tight = _sibling(eager, memory_budget_bytes=1)
    pipe.memory_budget_bytes = 1  # everything tiled: latent windows share one graph
    plan = pipe.plan((40, 40), (80, 80), "sr", 2, True)
    assert plan.latent is not None
    want = eager_tight.restore_batch(images, options)
    got = pipe.restore_batch(images, options)
    for w, g in zip(want, got, strict=True):
        assert not isinstance(w, Exception) and not isinstance(g, Exception)
        np.testing.assert_array_equal(g.image, w.image)
    assert capture.captures >= 1 and pipe.graphs is not None and pipe.graphs.stats.replays > 2


def test_cuda_graphs_need_cuda(eager: DiffBIRPipeline) -> None:
    with pytest.raises(InvalidInputError, match="CUDA"):
        DiffBIRPipeline(
            eager.models,
            eager.stage1,
            preset="tiny",
            device="cpu",
            acceleration=Acceleration(cuda_graphs=True),
        )
    assert DiffBIRPipeline(eager.models, eager.stage1, preset="tiny", device="cpu").graphs is None


def test_compile_makes_twins_and_picks_them_by_size(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch._dynamo

    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    monkeypatch.setattr(config, name, 8)  # dynamo's default; restored after the test
    pipe = DiffBIRPipeline.from_preset(
        "tiny",
        version="v2",
        device="cpu",
        precision="fp32",
        acceleration=Acceleration(compile=True, compile_sizes=[(64, 64)]),
    )
    assert getattr(config, name) == COMPILE_RECOMPILE_LIMIT
    model = pipe.models["sr"]
    compiled = torch._dynamo.eval_frame.OptimizedModule

    def compiled_of(net: Any) -> Any:
        """The compiled module (under the dynamic-batch wrapper, on by default), or None when eager."""
        inner = net.compiled if isinstance(net, DynamicBatch) else net
        return inner if isinstance(inner, compiled) else None

    assert compiled_of(model.unet) is None  # the eager nets stay as they were
    twin = pipe.accel.net_for(model, torch.zeros(2, 4, 8, 8))  # 64 px diffusion = 8x8 latent: compiled
    assert (
        twin is not model and compiled_of(twin.unet) is not None and compiled_of(twin.controlnet) is not None
    )
    assert compiled_of(twin.unet)._orig_mod is model.unet and twin.vae is model.vae
    assert pipe.accel.net_for(model, torch.zeros(2, 4, 8, 16)) is model  # another size: eager, no compilation
    everything = DiffBIRPipeline.from_preset(
        "tiny", version="v2", device="cpu", precision="fp32", acceleration=Acceleration(compile=True)
    )
    any_model = everything.models["sr"]
    assert everything.accel.net_for(any_model, torch.zeros(1, 4, 8, 24)) is not any_model
    with pytest.raises(InvalidInputError, match="multiples of 64"):
        Acceleration(compile=True, compile_sizes=[(100, 64)])
