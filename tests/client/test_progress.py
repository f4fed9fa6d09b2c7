from __future__ import annotations

import io

from client.jobs import Job
from client.progress import JobProgressBar


def snapshot(status: str, stage: str = "", step: int = 0, total: int = 0) -> Job:
    return Job.from_dict(
        {"id": "j_x", "status": status, "progress": {"stage": stage, "step": step, "total": total}}
    )


def final_lines(text: str) -> list[str]:
    """The last rendering of each bar (tqdm redraws in place with \\r and ends a closed bar with \\n)."""
    return [line.split("\r")[-1].strip() for line in text.split("\n") if line.strip()]


def test_bar_shows_stage_and_server_step_counts():
    out = io.StringIO()
    bar = JobProgressBar(file=out)
    bar(snapshot("queued"))
    bar(snapshot("running", "stage1", 0, 1))
    bar(snapshot("running", "sampler", 3, 10))
    bar(snapshot("running", "sampler", 7, 10))
    assert "sampler:  70%" in out.getvalue() and "7/10" in out.getvalue()
    bar(snapshot("running", "vae_decode", 0, 4))  # polling missed the sampler's last steps
    bar(snapshot("succeeded", "vae_decode", 4, 4))
    lines = final_lines(out.getvalue())
    assert lines[0].startswith("queued 00:00") and "/" not in lines[0]
    assert lines[1].startswith("stage1: 100%") and "1/1" in lines[1]
    assert lines[2].startswith("sampler: 100%") and "10/10" in lines[2]
    assert lines[3].startswith("vae_decode: 100%") and "4/4" in lines[3] and "succeeded" in lines[3]


def test_failed_job_leaves_bar_where_it_stopped():
    out = io.StringIO()
    bar = JobProgressBar(file=out)
    bar(snapshot("running", "sampler", 5, 20))
    bar(snapshot("failed", "sampler", 6, 20))
    last = final_lines(out.getvalue())[-1]
    assert "6/20" in last and "failed" in last and "20/20" not in last


def test_disabled_bar_writes_nothing():
    out = io.StringIO()
    bar = JobProgressBar(file=out, disable=True)
    bar(snapshot("running", "sampler", 5, 20))
    bar(snapshot("succeeded", "sampler", 20, 20))
    assert out.getvalue() == ""


def test_worker_pseudo_stages_are_not_counted():
    """The worker reports ("starting", 0, steps) before any work and ("done", total, total) at the end."""
    out = io.StringIO()
    bar = JobProgressBar(file=out)
    bar(snapshot("running", "starting", 0, 4))
    bar(snapshot("running", "sampler", 2, 4))
    bar(snapshot("succeeded", "done", 4, 4))
    lines = final_lines(out.getvalue())
    assert lines[0].startswith("starting 00:00") and "4/4" not in lines[0]
    assert lines[-1].startswith("sampler: 100%") and "4/4" in lines[-1] and "succeeded" in lines[-1]
    assert not any(line.startswith("done") for line in lines)
