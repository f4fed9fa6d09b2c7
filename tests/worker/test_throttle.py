"""The progress throttle and the cancel-read interval (worker.throttle), on a hand-driven clock."""

from __future__ import annotations

from worker.throttle import Every, ProgressThrottle


def test_progress_goes_out_once_per_interval_and_at_stage_changes() -> None:
    throttle = ProgressThrottle(interval_s=0.2, stage_gap_s=0.05)
    sent = [
        t
        for t, stage in [
            (0.00, "stage1"),  # the first event always goes out
            (0.01, "stage1"),
            (0.03, "sampler"),  # new stage, but within the gap of the last write
            (0.06, "sampler"),  # new stage (relative to the last write), past the gap
            (0.10, "sampler"),
            (0.25, "sampler"),
            (0.30, "sampler"),  # an interval after the last write
            (0.32, "vae_decode"),  # new stage within the gap: dropped
            (0.40, "vae_decode"),
        ]
        if throttle.should_send(stage, t)
    ]
    assert sent == [0.00, 0.06, 0.30, 0.40]


def test_every_is_due_first_and_then_once_per_interval() -> None:
    every = Every(0.2)
    assert [t for t in (0.0, 0.1, 0.19, 0.2, 0.3, 0.41) if every.due(t)] == [0.0, 0.2, 0.41]
