"""The Kubernetes manifests (deploy/k8s) render with `kubectl kustomize`, their core resources validate
against the Kubernetes schemas (kubernetes-validate, offline, strict), and the parts the service depends on
are right: the KEDA trigger reads the list the API really enqueues to, the monitors point at named ports
that exist, the worker asks for a GPU and outlives its longest job on shutdown, no secret value is inlined."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import typing
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import redis
import yaml
from pydantic import SecretStr

from common.queue import enqueue_restore, make_celery, queue_depth
from common.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
COMPONENTS = sorted(p.name for p in (K8S / "components").iterdir() if (p / "kustomization.yaml").is_file())
# Oldest Kubernetes the manifests claim (docs/deploy.md) and the newest schemas kubernetes-validate ships.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
# Resources of operators (KEDA, Prometheus Operator): no schema offline; their fields are checked below.
CRD_GROUPS = {"keda.sh", "monitoring.coreos.com"}
# Secrets the operator creates (docs/deploy.md "Secrets"): name -> keys the manifests may read.
SECRETS = {
    "diffbir-redis": {
        "url",
        "address",
        "password",
        "sentinel-addresses",
        "sentinel-master",
        "sentinel-password",
    },
    "diffbir-s3": {"access-key-id", "secret-access-key"},
    "diffbir-auth": {"api-keys", "webhook-secret"},
}


# ----------------------------------------------------------------------------------------------------------
# Rendering


def kubectl() -> str:
    exe = shutil.which("kubectl") or shutil.which("kubectl", path=str(Path(sys.executable).parent))
    assert exe, "kubectl is required: bash scripts/setup.sh installs it"
    return exe


def render(path: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """Every overlay, plus prod with each optional component (they are built to go on any overlay)."""
    out = {name: render(K8S / "overlays" / name) for name in OVERLAYS}
    for component in COMPONENTS:
        variant = tmp_path_factory.mktemp(f"prod-{component}")
        (variant / "kustomization.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kustomize.config.k8s.io/v1beta1",
                    "kind": "Kustomization",
                    # kustomize refuses absolute paths to other kustomizations
                    "resources": [os.path.relpath(K8S / "overlays" / "prod", variant)],
                    "components": [os.path.relpath(K8S / "components" / component, variant)],
                }
            )
        )
        out[f"prod+{component}"] = render(variant)
    return out


def variants() -> list[str]:
    return OVERLAYS + [f"prod+{c}" for c in COMPONENTS]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def container(deployment: dict[str, Any], index: int = 0) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]["containers"][index]


def env_of(docs: list[dict[str, Any]], workload: dict[str, Any]) -> dict[str, str]:
    """Literal environment of a workload's first container: its ConfigMaps (envFrom), then `env` values."""
    c = container(workload)
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        if "configMapRef" in source:
            env.update(one(docs, "ConfigMap", source["configMapRef"]["name"]).get("data", {}))
    env.update({e["name"]: e["value"] for e in c.get("env", []) if "value" in e})
    return env


def test_there_are_dev_and_prod_overlays():
    assert {"dev", "prod"} <= set(OVERLAYS)
    assert {"scale-to-zero", "redis-sentinel"} <= set(COMPONENTS)


def test_kustomize_is_recent_enough():
    """Components and `patches` need a recent kustomize; Debian bookworm's kubectl 1.20 embeds v2.0.3."""
    out = subprocess.run(
        [kubectl(), "version", "--client", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    version = json.loads(out.stdout)["kustomizeVersion"]
    assert int(re.match(r"v?(\d+)", version).group(1)) >= 5, version


@pytest.mark.parametrize("variant", variants())
def test_overlay_holds_the_whole_service(rendered, variant):
    docs = rendered[variant]
    for kind, name in [
        ("Deployment", "diffbir-api"),
        ("Service", "diffbir-api"),
        ("HorizontalPodAutoscaler", "diffbir-api"),
        ("PodDisruptionBudget", "diffbir-api"),
        ("Deployment", "diffbir-worker"),
        ("PodDisruptionBudget", "diffbir-worker"),
        ("ScaledObject", "diffbir-worker"),
        ("TriggerAuthentication", "diffbir-redis"),
        ("PersistentVolumeClaim", "diffbir-weights"),
        ("Job", "diffbir-weights-download"),
        ("ServiceMonitor", "diffbir-api"),
        ("PodMonitor", "diffbir-worker"),
        ("PrometheusRule", "diffbir"),
    ]:
        one(docs, kind, name)
    namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
    assert len(namespaces) == 1 and None not in namespaces, namespaces
    assert one(docs, "Namespace", namespaces.pop())


@pytest.mark.parametrize("variant", variants())
def test_settings_in_the_manifests_are_real_and_valid(rendered, variant, monkeypatch):
    """Every DIFFBIR_ variable the manifests set is a setting the code reads, and the values validate."""
    from worker.config import WorkerSettings

    known = {f"DIFFBIR_{name.upper()}" for name in WorkerSettings.model_fields} | {"DIFFBIR_LOG_LEVEL"}
    docs = rendered[variant]
    for workload in of_kind(docs, "Deployment") + of_kind(docs, "Job"):
        c = container(workload)
        named = {e["name"] for e in c.get("env", [])} | set(env_of(docs, workload))
        assert {n for n in named if n.startswith("DIFFBIR_")} <= known, workload["metadata"]["name"]
        with monkeypatch.context() as m:
            for name in [n for n in os.environ if n.startswith("DIFFBIR_")]:
                m.delenv(name)
            for name, value in env_of(docs, workload).items():
                m.setenv(name, value)
            WorkerSettings()  # raises on a bad value or an inconsistent pair (time limits, timeouts)


# ----------------------------------------------------------------------------------------------------------
# Schema validation


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("variant", variants())
def test_core_resources_validate_against_the_kubernetes_schema(rendered, variant, version):
    core = [d for d in rendered[variant] if d["apiVersion"].split("/")[0] not in CRD_GROUPS]
    assert len(core) >= 15
    for doc in core:
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize(
    ("what", "mutate"),
    [
        ("misspelled field", lambda d: d["spec"]["template"]["spec"].update(terminationGracePeriod=5)),
        ("string where an integer goes", lambda d: d["spec"].update(revisionHistoryLimit="five")),
        ("probe without a handler port", lambda d: container(d)["livenessProbe"]["httpGet"].pop("port")),
    ],
    ids=["misspelled", "wrong-type", "missing-required"],
)
def test_schema_validation_catches_broken_resources(rendered, what, mutate):
    deployment = json.loads(json.dumps(one(rendered["prod"], "Deployment", "diffbir-api")))
    kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)
    mutate(deployment)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)


# ----------------------------------------------------------------------------------------------------------
# KEDA


def _trigger_auth_params(docs: list[dict[str, Any]], trigger: dict[str, Any]) -> set[str]:
    auth = one(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    params = set()
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["key"] in SECRETS[ref["name"]], ref
        params.add(ref["parameter"])
    return params


@pytest.mark.parametrize("variant", variants())
def test_scaled_object_scales_the_worker_on_the_celery_queue(rendered, variant):
    docs = rendered[variant]
    scaled = one(docs, "ScaledObject", "diffbir-worker")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    target = spec["scaleTargetRef"]
    assert target.get("kind", "Deployment") == "Deployment"
    worker = one(docs, "Deployment", target["name"])
    assert "replicas" not in worker["spec"], "KEDA owns the replica count; a re-apply must not reset it"
    assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert spec["pollingInterval"] > 0 and spec["cooldownPeriod"] > 0
    assert spec["fallback"]["replicas"] >= 1 and spec["fallback"]["failureThreshold"] >= 1

    (trigger,) = spec["triggers"]
    meta = trigger["metadata"]
    queue = env_of(docs, worker).get("DIFFBIR_QUEUE_NAME", Settings.model_fields["queue_name"].default)
    assert meta["listName"] == queue
    assert int(meta["listLength"]) >= 1 and int(meta["activationListLength"]) >= 0
    assert int(meta["databaseIndex"]) >= 0
    params = _trigger_auth_params(docs, trigger) | set(meta)
    assert "password" in params
    if trigger["type"] == "redis":
        assert "address" in params or {"host", "port"} <= params, params
    else:
        assert trigger["type"] == "redis-sentinel"
        assert {"addresses", "sentinelMaster"} <= params, params
    assert not {"password", "sentinelPassword"} & set(meta), "passwords come from the TriggerAuthentication"


def test_scale_to_zero_only_where_the_api_can_take_jobs_without_a_worker(rendered):
    for variant in variants():
        docs = rendered[variant]
        probe = container(one(docs, "Deployment", "diffbir-api"))["readinessProbe"]["httpGet"]["path"]
        zero = one(docs, "ScaledObject", "diffbir-worker")["spec"]["minReplicaCount"] == 0
        # /readyz needs a worker heartbeat: at zero workers the API would never be ready to take the job
        # that should wake one.
        assert probe == ("/healthz" if zero else "/readyz"), variant
    assert one(rendered["dev"], "ScaledObject", "diffbir-worker")["spec"]["minReplicaCount"] == 0
    assert one(rendered["prod"], "ScaledObject", "diffbir-worker")["spec"]["minReplicaCount"] >= 1


def test_the_trigger_list_is_where_the_api_enqueues(rendered, redis_url):
    """Publish a job exactly as the API does, to the service's default database; the list KEDA reads (name
    and database) must hold it."""
    meta = one(rendered["prod"], "ScaledObject", "diffbir-worker")["spec"]["triggers"][0]["metadata"]
    service_db = Settings.model_fields["redis_url"].default.rsplit("/", 1)[1]
    settings = Settings(redis_url=f"{redis_url.rsplit('/', 1)[0]}/{service_db}", queue_name=meta["listName"])
    app = make_celery(settings)
    try:
        enqueue_restore(app, settings, "job-for-keda")
    finally:
        app.close()
    keda_view = redis.Redis.from_url(f"{redis_url.rsplit('/', 1)[0]}/{int(meta['databaseIndex'])}")
    try:
        assert keda_view.llen(meta["listName"]) == 1
        assert queue_depth(keda_view, settings.queue_name) == 1  # ...and it is all the API counts as queued
    finally:
        keda_view.close()


# ----------------------------------------------------------------------------------------------------------
# Prometheus Operator


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return bool(selector["matchLabels"]) and selector["matchLabels"].items() <= labels.items()


@pytest.mark.parametrize("variant", variants())
def test_service_monitor_scrapes_the_api_metrics_port(rendered, variant):
    docs = rendered[variant]
    monitor = one(docs, "ServiceMonitor", "diffbir-api")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    services = [
        s for s in of_kind(docs, "Service") if _selects(monitor["spec"]["selector"], s["metadata"]["labels"])
    ]
    assert [s["metadata"]["name"] for s in services] == ["diffbir-api"]
    (endpoint,) = monitor["spec"]["endpoints"]
    port = next(p for p in services[0]["spec"]["ports"] if p["name"] == endpoint["port"])
    api = container(one(docs, "Deployment", "diffbir-api"))
    assert port["targetPort"] in {p["name"] for p in api["ports"]}
    assert endpoint["path"] == "/metrics"


@pytest.mark.parametrize("variant", variants())
def test_pod_monitor_scrapes_the_worker_metrics_port(rendered, variant):
    docs = rendered[variant]
    monitor = one(docs, "PodMonitor", "diffbir-worker")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    worker = one(docs, "Deployment", "diffbir-worker")
    assert _selects(monitor["spec"]["selector"], worker["spec"]["template"]["metadata"]["labels"])
    api = one(docs, "Deployment", "diffbir-api")
    assert not _selects(monitor["spec"]["selector"], api["spec"]["template"]["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    ports = {p["name"]: p["containerPort"] for p in container(worker)["ports"]}
    assert endpoint["path"] == "/metrics"
    assert str(ports[endpoint["port"]]) == env_of(docs, worker)["DIFFBIR_WORKER_METRICS_PORT"]


def test_prod_monitors_carry_the_prometheus_release_label(rendered):
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule"):
        for monitor in of_kind(rendered["prod"], kind):
            assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


# ----------------------------------------------------------------------------------------------------------
# Alert rules (PrometheusRule)

RULES_DIR = ROOT / "deploy" / "prometheus" / "rules"


def _prometheus_rule_script() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("prometheus_rule", ROOT / "scripts" / "prometheus_rule.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prometheus_rule_is_generated_from_the_rule_files():
    script = _prometheus_rule_script()
    assert script.main(["--check"]) == 0, "stale: run python scripts/prometheus_rule.py --write"
    assert script.TARGET.read_text() == script.render()


@pytest.mark.parametrize("variant", variants())
def test_prometheus_rule_ships_every_rule_group_and_promtool_accepts_it(rendered, variant, tmp_path):
    rule = one(rendered[variant], "PrometheusRule", "diffbir")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    expected = [
        g for path in sorted(RULES_DIR.glob("*.yml")) for g in yaml.safe_load(path.read_text())["groups"]
    ]
    assert rule["spec"]["groups"] == expected and len(expected) >= 2
    # The rendered spec is a valid Prometheus rule file (what the operator hands Prometheus).
    exe = shutil.which("promtool")
    assert exe, "promtool is required (scripts/setup.sh installs it)"
    extracted = tmp_path / "rules.yml"
    extracted.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    check = subprocess.run(
        [exe, "check", "rules", str(extracted)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize("variant", variants())
def test_rule_job_labels_match_the_monitors_job_labels(rendered, variant):
    """up{job="..."} in the rules must name the job label the operator gives each scrape target."""
    docs = rendered[variant]
    rule = one(docs, "PrometheusRule", "diffbir")
    exprs = [r["expr"] for group in rule["spec"]["groups"] for r in group["rules"]]
    named = {job for expr in exprs for job in re.findall(r'job="([^"]+)"', expr)}
    assert named, "the rules select scrape jobs by name"
    monitor = one(docs, "ServiceMonitor", "diffbir-api")
    assert "jobLabel" not in monitor["spec"]  # then the job label is the Service's name
    jobs = {
        s["metadata"]["name"]
        for s in of_kind(docs, "Service")
        if _selects(monitor["spec"]["selector"], s["metadata"]["labels"])
    }
    for endpoint in one(docs, "PodMonitor", "diffbir-worker")["spec"]["podMetricsEndpoints"]:
        relabel = [r for r in endpoint.get("relabelings", []) if r.get("targetLabel") == "job"]
        assert len(relabel) == 1 and relabel[0]["action"] == "replace", "PodMonitor jobs default to ns/name"
        jobs.add(relabel[0]["replacement"])
    assert named <= jobs, (named, jobs)


# ----------------------------------------------------------------------------------------------------------
# Workers: GPU, shutdown, readiness


@pytest.mark.parametrize("variant", variants())
def test_worker_requests_one_gpu_on_a_gpu_node(rendered, variant):
    worker = one(rendered[variant], "Deployment", "diffbir-worker")
    pod = worker["spec"]["template"]["spec"]
    resources = container(worker)["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert resources["requests"].get("nvidia.com/gpu", 1) == 1
    assert pod["nodeSelector"]["nvidia.com/gpu.present"] == "true"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert env_of(rendered[variant], worker)["DIFFBIR_WORKER_DEVICE"] == "cuda"
    # ...and nothing else asks for one: the API and the weights Job run on CPU nodes.
    for doc in rendered[variant]:
        if doc["kind"] in {"Deployment", "Job"} and doc is not worker:
            assert "nvidia.com/gpu" not in json.dumps(doc["spec"]["template"]), doc["metadata"]["name"]


@pytest.mark.parametrize("variant", variants())
def test_worker_grace_period_covers_the_longest_job(rendered, variant):
    docs = rendered[variant]
    worker = one(docs, "Deployment", "diffbir-worker")
    env = env_of(docs, worker)
    from worker.config import WorkerSettings

    defaults = WorkerSettings.model_fields
    soft = int(env.get("DIFFBIR_TASK_SOFT_TIME_LIMIT_S", defaults["task_soft_time_limit_s"].default))
    hard = int(env.get("DIFFBIR_TASK_HARD_TIME_LIMIT_S", defaults["task_hard_time_limit_s"].default))
    grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    # The running job may take until its hard limit; the upload of its result and webhooks need a margin.
    assert grace >= hard + 30 > soft, (grace, soft, hard)
    strategy = worker["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0, "an upgrade must not stop a worker before its successor is ready"


def test_worker_uses_the_weights_the_job_downloads(rendered):
    docs = rendered["prod"]
    worker = one(docs, "Deployment", "diffbir-worker")
    job = one(docs, "Job", "diffbir-weights-download")
    mounts = {m["name"]: m for m in container(worker)["volumeMounts"]}
    volumes = {v["name"]: v for v in worker["spec"]["template"]["spec"]["volumes"]}
    job_volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    job_mounts = {m["name"]: m for m in container(job)["volumeMounts"]}
    weights_env = env_of(docs, worker)["DIFFBIR_WEIGHTS_DIR"]
    (name,) = [n for n, m in mounts.items() if m["mountPath"] == weights_env]
    assert mounts[name]["readOnly"] is True
    claim = volumes[name]["persistentVolumeClaim"]["claimName"]
    (job_name,) = [
        n for n, v in job_volumes.items() if v.get("persistentVolumeClaim", {}).get("claimName") == claim
    ]
    assert job_mounts[job_name]["mountPath"] == env_of(docs, job)["DIFFBIR_WEIGHTS_DIR"] == weights_env
    assert not job_mounts[job_name].get("readOnly", False)
    command = container(job)["command"]
    assert command[:4] == ["python", "-m", "model", "download"]
    assert command[command.index("--version") + 1] == "$(DIFFBIR_WORKER_VERSION)"
    assert env_of(docs, job)["DIFFBIR_WORKER_VERSION"] == env_of(docs, worker)["DIFFBIR_WORKER_VERSION"]
    assert container(job)["image"] == container(worker)["image"]
    assert "ReadWriteMany" in one(docs, "PersistentVolumeClaim", claim)["spec"]["accessModes"]


class _Metrics(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(type(self).body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def metrics_server() -> Iterator[tuple[int, type[_Metrics]]]:
    handler = type("Handler", (_Metrics,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler
    finally:
        server.shutdown()
        server.server_close()


def test_worker_readiness_probe_waits_for_the_loaded_model(rendered, metrics_server):
    """Run the probe's own command against the worker's real metrics: not ready while loading, then ready."""
    from prometheus_client import generate_latest

    from worker.metrics import WorkerMetrics

    port, handler = metrics_server
    worker = one(rendered["prod"], "Deployment", "diffbir-worker")
    command = container(worker)["readinessProbe"]["exec"]["command"]
    metrics_port = env_of(rendered["prod"], worker)["DIFFBIR_WORKER_METRICS_PORT"]
    assert f"127.0.0.1:{metrics_port}/metrics" in command[-1]
    command = [sys.executable, *command[1:-1], command[-1].replace(f":{metrics_port}/", f":{port}/")]

    metrics = WorkerMetrics()
    handler.body = generate_latest(metrics.registry)
    assert subprocess.run(command, timeout=30, check=False).returncode == 1
    metrics.model_load.set(12.5)
    handler.body = generate_latest(metrics.registry)
    assert subprocess.run(command, timeout=30, check=False).returncode == 0


# ----------------------------------------------------------------------------------------------------------
# API


def test_api_probe_paths_are_real_routes(rendered):
    from service.routes import ops

    paths = {route.path for route in ops.routes}
    for variant in variants():
        api = container(one(rendered[variant], "Deployment", "diffbir-api"))
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            assert api[probe]["httpGet"]["path"] in paths
            assert api[probe]["httpGet"]["port"] == "http"
        assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
        ports = {p["name"]: p["containerPort"] for p in api["ports"]}
        assert (
            str(ports["http"])
            == env_of(rendered[variant], one(rendered[variant], "Deployment", "diffbir-api"))["DIFFBIR_PORT"]
        )


@pytest.mark.parametrize("variant", variants())
def test_api_scales_and_survives_drains(rendered, variant):
    docs = rendered[variant]
    api = one(docs, "Deployment", "diffbir-api")
    assert "replicas" not in api["spec"], "the HPA owns the replica count"
    hpa = one(docs, "HorizontalPodAutoscaler", "diffbir-api")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "diffbir-api",
    }
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    labels = api["spec"]["template"]["metadata"]["labels"]
    pdb = one(docs, "PodDisruptionBudget", "diffbir-api")
    assert _selects(pdb["spec"]["selector"], labels)
    resources = container(api)["resources"]
    assert resources["requests"]["cpu"] and resources["limits"]["memory"]


# ----------------------------------------------------------------------------------------------------------
# Security


def _secret_settings() -> set[str]:
    """Settings whose value is a secret (SecretStr, also inside lists), plus the Redis URL (it may hold a
    password): the environment variables that must come from a Secret."""
    names = {"DIFFBIR_REDIS_URL"}
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if SecretStr in {annotation, *typing.get_args(annotation)} or any(
            SecretStr in typing.get_args(arg) for arg in typing.get_args(annotation)
        ):
            names.add(f"DIFFBIR_{name.upper()}")
    return names


@pytest.mark.parametrize("variant", variants())
def test_no_secret_value_is_inlined(rendered, variant):
    secret_env = _secret_settings()
    assert {"DIFFBIR_S3_SECRET_ACCESS_KEY", "DIFFBIR_API_KEYS", "DIFFBIR_WEBHOOK_SECRET"} <= secret_env
    docs = rendered[variant]
    assert not of_kind(docs, "Secret"), "Secrets are created by the operator, never shipped with values"
    for cm in of_kind(docs, "ConfigMap"):
        assert not set(cm.get("data", {})) & secret_env, cm["metadata"]["name"]
    read: set[str] = set()
    for workload in of_kind(docs, "Deployment") + of_kind(docs, "Job"):
        for c in workload["spec"]["template"]["spec"]["containers"]:
            for env in c.get("env", []):
                if env["name"] in secret_env:
                    ref = env["valueFrom"]["secretKeyRef"]  # KeyError = a literal value
                    assert ref["key"] in SECRETS[ref["name"]], ref
                    read.add(env["name"])
    assert {"DIFFBIR_REDIS_URL", "DIFFBIR_API_KEYS", "DIFFBIR_WEBHOOK_SECRET"} <= read


def test_the_secret_check_catches_an_inlined_value(rendered):
    docs = json.loads(json.dumps(rendered["prod"]))
    env = container(one(docs, "Deployment", "diffbir-worker"))["env"]
    env.append({"name": "DIFFBIR_S3_SECRET_ACCESS_KEY", "value": "hunter2"})
    with pytest.raises(KeyError):
        test_no_secret_value_is_inlined({"prod": docs}, "prod")


@pytest.mark.parametrize("variant", variants())
def test_pods_are_locked_down(rendered, variant):
    for workload in of_kind(rendered[variant], "Deployment") + of_kind(rendered[variant], "Job"):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        for c in pod["containers"]:
            ctx = c["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False and ctx["readOnlyRootFilesystem"] is True
            assert ctx["capabilities"]["drop"] == ["ALL"]


@pytest.mark.parametrize("variant", variants())
def test_workers_take_no_inbound_traffic_but_metrics(rendered, variant):
    docs = rendered[variant]
    policies = of_kind(docs, "NetworkPolicy")
    worker = one(docs, "Deployment", "diffbir-worker")
    labels = worker["spec"]["template"]["metadata"]["labels"]
    mine = [p for p in policies if _selects(p["spec"]["podSelector"], labels)]
    assert all(p["spec"]["policyTypes"] == ["Ingress"] for p in mine)
    assert any(not p["spec"].get("ingress") for p in mine), "a default-deny policy must select the workers"
    allowed = [rule for p in mine for rule in p["spec"].get("ingress", [])]
    assert allowed and all([port["port"] for port in rule["ports"]] == ["metrics"] for rule in allowed)
    assert all(rule.get("from") for rule in allowed), "metrics only from the monitoring namespace"
    # The API and the weights Job are under the default deny as well.
    for kind, name in (("Deployment", "diffbir-api"), ("Job", "diffbir-weights-download")):
        pod_labels = one(docs, kind, name)["spec"]["template"]["metadata"]["labels"]
        denied = [p for p in policies if not p["spec"].get("ingress")]
        assert any(_selects(p["spec"]["podSelector"], pod_labels) for p in denied), name


def test_prod_images_are_pinned(rendered):
    for doc in of_kind(rendered["prod"], "Deployment") + of_kind(rendered["prod"], "Job"):
        for c in doc["spec"]["template"]["spec"]["containers"]:
            image = c["image"]
            assert "@sha256:" in image or re.search(r":[\w.-]+$", image.split("/")[-1]), image
            assert not image.endswith(":latest"), image
