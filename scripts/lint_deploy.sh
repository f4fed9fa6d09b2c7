#!/usr/bin/env bash
# Validate docker-compose.yml, lint the Dockerfiles and render every Kubernetes overlay; no Docker engine or
# cluster is needed. Schema validation of the rendered manifests is in tests/deploy/test_k8s.py.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v docker-compose >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose) >/dev/null
fi
docker-compose -f docker-compose.yml config -q
docker-compose -f docker-compose.yml --profile tracing config -q
for f in docker/*.Dockerfile; do
    .venv/bin/hadolint --failure-threshold warning "$f"
done
# The PrometheusRule is generated from deploy/prometheus/rules (scripts/prometheus_rule.py --write).
.venv/bin/python scripts/prometheus_rule.py --check
# kubectl from PATH, or the one scripts/setup.sh put into .venv.
kubectl=$(command -v kubectl || echo .venv/bin/kubectl)
for overlay in deploy/k8s/overlays/*/; do
    "$kubectl" kustomize "$overlay" >/dev/null
done
echo "deploy files OK"
