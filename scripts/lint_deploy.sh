#!/usr/bin/env bash
# Validate docker-compose.yml and lint the Dockerfiles; no Docker engine is needed for either.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v docker-compose >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose) >/dev/null
fi
docker-compose -f docker-compose.yml config -q
for f in docker/*.Dockerfile; do
    .venv/bin/hadolint --failure-threshold warning "$f"
done
echo "deploy files OK"
