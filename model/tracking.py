"""Per-batch bookkeeping of a restore: each item's progress and cancellation (`BatchHooks`) and the stage
timings (`StageTimer`)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence

import torch

from model.errors import CanceledError
from model.options import CancelFn, ProgressFn


class BatchHooks:
    """Per-item progress and cancellation for a batch; a canceled item is finished and discarded."""

    def __init__(self, progresses: Sequence[ProgressFn | None], cancels: Sequence[CancelFn | None]) -> None:
        self.progresses = list(progresses)
        self.cancels = list(cancels)
        self.canceled = [False] * len(self.cancels)

    @classmethod
    def silent(cls, n: int) -> BatchHooks:
        """Hooks for `n` items that nobody watches or cancels."""
        return cls([None] * n, [None] * n)

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


class StageTimer:
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
