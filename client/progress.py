"""A tqdm progress display driven by job snapshots: one bar per stage, ``step/total`` from the server."""

from __future__ import annotations

from typing import IO

from tqdm import tqdm

from client.jobs import Job

# Progress stages that are states, not work with steps: shown without a count. "done" only marks the end.
_WAITING_STAGES = frozenset({"queued", "starting"})
_FINAL_STAGE = "done"


class JobProgressBar:
    """Feeds ``Job`` snapshots into tqdm.

    The server reports progress per stage (``stage1``, ``sampler``, ``vae_decode``...) with its own
    ``total``, so a new stage closes the previous bar and opens a fresh one; the bar's description is the
    stage. A superseded stage is shown as complete: the worker only moves on after finishing it, and a poll
    may simply have missed its last steps.
    """

    def __init__(self, file: IO[str] | None = None, disable: bool = False, mininterval: float = 0.0):
        self._file, self._disable, self._mininterval = file, disable, mininterval
        self._bar: tqdm | None = None
        self._key: tuple[str, int] | None = None

    def __call__(self, job: Job) -> None:
        self.update(job)

    def update(self, job: Job) -> None:
        stage = job.progress.stage or job.status
        if not (job.done and stage == _FINAL_STAGE):
            waiting = stage in _WAITING_STAGES or job.status == "queued"
            total = job.progress.total if job.progress.total > 0 and not waiting else None
            key = (stage, total or 0)
            if key != self._key:
                failed = job.done and not job.succeeded
                initial = min(job.progress.step, total) if total else 0
                self._open(stage, total, initial, previous_finished=not failed)
                self._key = key
            assert self._bar is not None
            if total is not None and job.progress.step != self._bar.n:
                self._bar.n = min(job.progress.step, total)
                self._bar.refresh()
        if job.done:
            if self._bar is not None:
                self._bar.set_postfix_str(job.status, refresh=True)
            self.close(finished=job.succeeded)

    def close(self, finished: bool = False) -> None:
        if self._bar is None:
            return
        if finished and self._bar.total:
            self._bar.n = self._bar.total
            self._bar.refresh()
        self._bar.close()
        self._bar = None
        self._key = None

    def _open(self, stage: str, total: int | None, initial: int, previous_finished: bool) -> None:
        self.close(finished=previous_finished)
        self._bar = tqdm(
            total=total,
            initial=initial,  # steps done before we looked do not count towards the rate
            desc=stage,
            unit="step",
            file=self._file,
            disable=self._disable,
            mininterval=self._mininterval,
            dynamic_ncols=True,
            # Without a total there is nothing to count: show the state and how long it has lasted.
            bar_format=None if total else "{desc} {elapsed}{postfix}",
        )
