from __future__ import annotations

import functools
import json

import httpx
import pytest

from client import cli
from client.client import RestoreClient
from tests.client.conftest import JOB_ID, FakeClock, ScriptedAPI, job_doc, json_response, problem

JOB_PATH = f"/v1/jobs/{JOB_ID}"


@pytest.fixture
def run_cli(monkeypatch, tmp_path, api: ScriptedAPI, clock: FakeClock):
    """Runs ``restore-client`` in-process against the scripted API; returns (exit code, output path)."""
    image = tmp_path / "in.png"
    image.write_bytes(b"\x89PNG input")
    out = tmp_path / "out" / "restored.png"
    factory = functools.partial(
        RestoreClient, transport=api.transport(), sleep=clock.sleep, clock=clock.monotonic
    )
    monkeypatch.setattr(cli, "RestoreClient", factory)

    def run(*extra: str) -> tuple[int, object]:
        argv = [str(image), "-o", str(out), "--url", "http://api.test", *extra]
        return cli.main(argv), out

    return run


def test_success_writes_output_and_sends_parameters(run_cli, api: ScriptedAPI, capsys):
    api.on("POST", "/v1/restore", [json_response(202, job_doc())])
    api.on(
        "GET",
        JOB_PATH,
        [
            json_response(200, job_doc("running", "sampler", 2, 5)),
            json_response(200, job_doc("running", "sampler", 5, 5)),
            json_response(200, job_doc("succeeded", "done", 1, 1, result={"width": 64, "height": 48})),
        ],
    )
    api.on("GET", f"{JOB_PATH}/result", [httpx.Response(200, content=b"RESTORED")])
    code, out = run_cli("--fidelity", "0.7", "--task", "sr", "--upscale", "4", "--steps", "5", "--seed", "7")
    assert code == cli.EXIT_OK
    assert out.read_bytes() == b"RESTORED"
    form = api.requests[0].content.decode("latin-1")
    for name, value in [("fidelity", "0.7"), ("steps", "5"), ("seed", "7"), ("output_format", "png")]:
        assert f'name="{name}"\r\n\r\n{value}\r\n' in form
    err = capsys.readouterr().err
    assert "sampler:  40%" in err and "2/5" in err and "5/5" in err
    assert "wrote" in err and "64x48" in err


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        (
            [json_response(200, job_doc("failed", error={"code": "bad_input", "message": "x"}))],
            cli.EXIT_JOB_FAILED,
        ),
        (
            [json_response(200, job_doc("canceled", error={"code": "canceled", "message": ""}))],
            cli.EXIT_CANCELED,
        ),
        ([problem(500, "internal", "boom")], cli.EXIT_UNAVAILABLE),
    ],
)
def test_job_outcomes_map_to_exit_codes(run_cli, api: ScriptedAPI, answers, expected, capsys):
    api.on("POST", "/v1/restore", [json_response(202, job_doc())])
    api.on("GET", JOB_PATH, answers)
    code, out = run_cli()
    assert code == expected
    assert not out.exists()
    assert JOB_ID in capsys.readouterr().err


def test_rejected_request_exits_3_with_problem_detail(run_cli, api: ScriptedAPI, capsys):
    api.on("POST", "/v1/restore", [problem(422, "validation_error", "fidelity must be <= 1")])
    code, _ = run_cli("--fidelity", "3")
    assert code == cli.EXIT_REJECTED
    assert "fidelity must be <= 1" in capsys.readouterr().err


def test_unreachable_api_exits_5(run_cli, api: ScriptedAPI):
    api.on("POST", "/v1/restore", [httpx.ConnectError("connection refused")])
    assert run_cli()[0] == cli.EXIT_UNAVAILABLE


def test_timeout_exits_4(run_cli, api: ScriptedAPI, capsys):
    api.on("POST", "/v1/restore", [json_response(202, job_doc())])
    api.on("GET", JOB_PATH, [json_response(200, job_doc("queued"))])
    assert run_cli("--timeout", "2")[0] == cli.EXIT_TIMEOUT
    assert f"/v1/jobs/{JOB_ID}" in capsys.readouterr().err


def test_ctrl_c_cancels_the_job(run_cli, api: ScriptedAPI, clock: FakeClock):
    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    clock.on_sleep = interrupted
    api.on("POST", "/v1/restore", [json_response(202, job_doc())])
    api.on("GET", JOB_PATH, [json_response(200, job_doc("running", "sampler", 1, 5))])
    api.on("DELETE", JOB_PATH, [json_response(202, job_doc("canceled"))])
    assert run_cli()[0] == cli.EXIT_INTERRUPTED
    assert [r.method for r in api.requests][-1] == "DELETE"


def test_missing_input_is_a_usage_error(tmp_path, capsys):
    assert cli.main([str(tmp_path / "nope.png"), "-o", str(tmp_path / "o.png")]) == cli.EXIT_USAGE
    with pytest.raises(SystemExit) as info:
        cli.main([str(tmp_path / "x.png")])  # -o is required
    assert info.value.code == cli.EXIT_USAGE


def test_url_input_is_submitted_as_json_and_followed_live(
    monkeypatch, tmp_path, api: ScriptedAPI, clock: FakeClock, capsys
):
    factory = functools.partial(
        RestoreClient, transport=api.transport(), sleep=clock.sleep, clock=clock.monotonic
    )
    monkeypatch.setattr(cli, "RestoreClient", factory)
    done = job_doc("succeeded", "done", 5, 5, result={"width": 8, "height": 8})
    events = f"id: 1-0\nevent: status\ndata: {json.dumps(done)}\n\n".encode()
    api.on("POST", "/v1/restore", [json_response(202, job_doc())])
    api.on(
        "GET",
        f"{JOB_PATH}/events",
        [httpx.Response(200, headers={"content-type": "text/event-stream"}, content=events)],
    )
    api.on("GET", f"{JOB_PATH}/result", [httpx.Response(200, content=b"OUT")])
    out = tmp_path / "r.webp"
    url = "https://images.example.com/p.jpg"
    argv = [url, "-o", str(out), "--url", "http://api.test", "--webhook-events", "start,completed"]
    assert cli.main(argv) == cli.EXIT_OK
    assert out.read_bytes() == b"OUT"
    body = json.loads(api.requests[0].content)
    assert body == {"image": url, "output_format": "webp", "webhook_events_filter": "start,completed"}
    assert JOB_PATH not in [r.url.path for r in api.requests]  # followed by events, not polled


def test_list_prints_one_job_per_line_up_to_the_limit(
    monkeypatch, api: ScriptedAPI, clock: FakeClock, capsys
):
    factory = functools.partial(
        RestoreClient, transport=api.transport(), sleep=clock.sleep, clock=clock.monotonic
    )
    monkeypatch.setattr(cli, "RestoreClient", factory)
    page = {
        "jobs": [job_doc("succeeded"), job_doc("succeeded")],
        "next_cursor": "c",
        "next": "/v1/jobs?cursor=c",
    }
    api.on("GET", "/v1/jobs", [json_response(200, page)])
    assert (
        cli.main(["list", "--url", "http://api.test", "--status", "succeeded", "--limit", "3"]) == cli.EXIT_OK
    )
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all(json.loads(line)["status"] == "succeeded" for line in lines)
    assert dict(api.requests[0].url.params) == {"status": "succeeded", "limit": "3"}
    api.routes["GET", "/v1/jobs"] = [problem(401, "unauthorized", "send a key")]
    assert cli.main(["list", "--url", "http://api.test"]) == cli.EXIT_REJECTED
