#!/usr/bin/env bash
# Build both images and prove they work: the API image answers /healthz and accepts a job, the worker image
# (CPU, tiny preset) finishes it, the result comes back through the API, the Kubernetes readiness probe of
# the worker passes inside the real image, and a SIGTERM during a job lets that job finish (the shutdown
# contract deploy/k8s relies on). Both containers run as in deploy/k8s: read-only root, non-root user.
#
# No registry is needed: the official bases (python, nvidia/cuda, ghcr.io/astral-sh/uv) are replaced by build
# args with a local Debian base made by debootstrap from this machine's apt mirror and a local image holding
# the uv binary from PyPI; everything the builds install comes from PyPI and Debian. Builds and containers use
# host networking and talk to a redis-server this script starts on a free loopback port.
#
#   bash scripts/image_smoke.sh            # as root; starts a Docker engine if none answers, stops it after
#   bash scripts/image_smoke.sh --clean    # also remove the images and the local bases afterwards
#
# Not part of the test suite (too slow). Measured on 2 shared cores: the first run took 17 minutes
# (debootstrap 3, API build 2, worker build 10 with ~6 GB of CUDA wheels, smoke run 1.5); a rerun reuses the
# bases and Docker's layer cache and took 1.5 minutes. Env: SMOKE_DIR (bases cache, default
# /var/tmp/diffbir-image-smoke), DEBIAN_MIRROR (default: the first URI of this machine's apt sources),
# TORCH_INDEX_URL (default PyPI, whose torch 2.14.1 wheel is a CUDA 13 build).
set -euo pipefail
cd "$(dirname "$0")/.."

CLEAN=false
[ "${1:-}" = "--clean" ] && CLEAN=true
STATE=${SMOKE_DIR:-/var/tmp/diffbir-image-smoke}
RUN=$(mktemp -d /tmp/diffbir-image-smoke.XXXXXX)
BASE_IMAGE=diffbir-local/base:bookworm
API_IMAGE=diffbir-api:smoke
WORKER_IMAGE=diffbir-worker:smoke
UV_VERSION=$(sed -n 's/^ARG UV_IMAGE=.*:\([0-9.]*\)$/\1/p' docker/worker.Dockerfile)
UV_IMAGE=diffbir-local/uv:$UV_VERSION
API_NAME=diffbir-smoke-api
WORKER_NAME=diffbir-smoke-worker
DOCKERD_PID=""
REDIS_PID=""
PY=.venv/bin/python
# The legacy builder: BuildKit would fetch the Dockerfiles' `# syntax=` frontend image from a registry.
export DOCKER_BUILDKIT=0

log() { printf '[smoke %4ds] %s\n' "$SECONDS" "$*"; }
die() {
    log "FAILED: $*"
    exit 1
}

cleanup() {
    local rc=$?
    if [ $rc -ne 0 ]; then
        for name in $API_NAME $WORKER_NAME; do
            if docker container inspect "$name" >/dev/null 2>&1; then
                log "last log lines of $name:"
                docker logs --tail 30 "$name" 2>&1 | sed 's/^/    /'
            fi
        done
    fi
    docker rm -f -v $API_NAME $WORKER_NAME >/dev/null 2>&1 || true
    if [ -n "$REDIS_PID" ]; then
        kill "$REDIS_PID" 2>/dev/null || true
        wait "$REDIS_PID" 2>/dev/null || true
    fi
    if $CLEAN && docker info >/dev/null 2>&1; then
        docker rmi -f $API_IMAGE $WORKER_IMAGE $BASE_IMAGE "$UV_IMAGE" >/dev/null 2>&1 || true
        docker image prune -f >/dev/null 2>&1 || true
    fi
    if [ -n "$DOCKERD_PID" ]; then
        kill "$DOCKERD_PID" 2>/dev/null || true
        wait "$DOCKERD_PID" 2>/dev/null || true
    fi
    rm -rf "$RUN" 2>/dev/null || true
    exit $rc
}
trap cleanup EXIT INT TERM

# wait_for SECONDS DESCRIPTION COMMAND...: retry COMMAND every second until it succeeds or time runs out.
wait_for() {
    local limit=$1 what=$2
    shift 2
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || die "$what (waited ${limit}s)"
        sleep 1
    done
}

free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# ---------------------------------------------------------------------------------------------------------
# Tools: the project's venv (Pillow, PyYAML for the checks), a Docker engine, redis-server, debootstrap.
[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap, and dockerd if no engine runs)"
mkdir -p "$STATE"
bash scripts/setup.sh >"$STATE/setup.log" 2>&1 || die "scripts/setup.sh (log: $STATE/setup.log)"
if ! docker info >/dev/null 2>&1; then
    command -v dockerd >/dev/null 2>&1 || die "no Docker engine answers and dockerd is not installed"
    log "starting dockerd (host networking only)"
    dockerd --iptables=false --ip6tables=false --bridge=none --pidfile="$RUN/dockerd.pid" \
        >"$STATE/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    wait_for 60 "dockerd did not start (see $STATE/dockerd.log)" docker info
fi

# ---------------------------------------------------------------------------------------------------------
# Local bases
if ! docker image inspect $BASE_IMAGE >/dev/null 2>&1; then
    command -v debootstrap >/dev/null 2>&1 ||
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null)
    mirror=${DEBIAN_MIRROR:-$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)}
    mirror=${mirror:-http://deb.debian.org/debian}
    rootfs=$STATE/rootfs
    rm -rf "$rootfs"
    log "debootstrap Debian bookworm (python3.11) from $mirror"
    debootstrap --variant=minbase \
        --include=python3.11,python3.11-venv,python3-venv,python-is-python3,ca-certificates \
        bookworm "$rootfs" "$mirror" >"$STATE/debootstrap.log" 2>&1 ||
        die "debootstrap failed (see $STATE/debootstrap.log)"
    # This machine's extra CA certificates (a TLS-inspecting egress proxy, if any) so pip and apt inside the
    # builds trust the same registries the host does. Local smoke images only; real builds use the defaults.
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/" 2>/dev/null || true
    chroot "$rootfs" update-ca-certificates >/dev/null 2>&1
    chroot "$rootfs" apt-get clean
    rm -rf "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
        --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
        --change 'CMD ["python3"]' - $BASE_IMAGE >/dev/null
    rm -rf "$rootfs"
fi
if ! docker image inspect "$UV_IMAGE" >/dev/null 2>&1; then
    log "uv $UV_VERSION from PyPI"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
        --platform "manylinux_2_17_$(uname -m)" "uv==$UV_VERSION" -d "$RUN/uv" 2>&1 | grep -v '^WARNING' || true
    python3 -m zipfile -e "$RUN"/uv/uv-*.whl "$RUN/uv/x"
    mkdir -p "$RUN/uv/root"
    install -m 0755 "$RUN"/uv/x/uv-*.data/scripts/uv "$RUN/uv/root/uv"
    tar -C "$RUN/uv/root" -c uv | docker import - "$UV_IMAGE" >/dev/null
fi

# ---------------------------------------------------------------------------------------------------------
# Builds
log "building $API_IMAGE"
timeout 1800 docker build --network host -f docker/api.Dockerfile \
    --build-arg PYTHON_IMAGE=$BASE_IMAGE -t $API_IMAGE . >"$STATE/api-build.log" 2>&1 ||
    { tail -20 "$STATE/api-build.log"; die "API image build (log: $STATE/api-build.log)"; }
log "building $WORKER_IMAGE"
timeout 3600 docker build --network host -f docker/worker.Dockerfile \
    --build-arg CUDA_IMAGE=$BASE_IMAGE --build-arg UV_IMAGE="$UV_IMAGE" \
    --build-arg UV_PYTHON_PREFERENCE=only-system \
    --build-arg TORCH_INDEX_URL="${TORCH_INDEX_URL:-https://pypi.org/simple}" \
    -t $WORKER_IMAGE . >"$STATE/worker-build.log" 2>&1 ||
    { tail -20 "$STATE/worker-build.log"; die "worker image build (log: $STATE/worker-build.log)"; }
for image in $API_IMAGE $WORKER_IMAGE; do
    log "image $image: $(docker image inspect -f '{{.Size}}' $image | awk '{printf "%.0f MB", $1 / 1e6}')"
done

# ---------------------------------------------------------------------------------------------------------
# Smoke run
REDIS_PORT=$(free_port)
API_PORT=$(free_port)
METRICS_PORT=$(free_port)
REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0
API=http://127.0.0.1:$API_PORT
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$RUN" \
    --logfile "$RUN/redis.log" &
REDIS_PID=$!
wait_for 10 "redis-server on :$REDIS_PORT" redis-cli -p "$REDIS_PORT" ping

common_env=(-e "DIFFBIR_REDIS_URL=$REDIS_URL" -e DIFFBIR_STORAGE_BACKEND=redis)
docker run -d --name $API_NAME --network host --read-only --tmpfs /tmp "${common_env[@]}" \
    -e DIFFBIR_HOST=127.0.0.1 -e "DIFFBIR_PORT=$API_PORT" $API_IMAGE >/dev/null
wait_for 60 "API /healthz" curl -sf "$API/healthz"
log "API image: /healthz $(curl -s "$API/healthz")"
code=$(curl -s -o /dev/null -w '%{http_code}' "$API/readyz")
[ "$code" = 503 ] || die "/readyz answered $code before any worker ran (expected 503)"
log "API image: /readyz 503 while no worker heartbeats (as expected)"

# make_image W H FILE
make_image() { "$PY" -c 'import sys; from PIL import Image; w, h, out = sys.argv[1:]; Image.radial_gradient("L").resize((int(w), int(h))).convert("RGB").save(out)' "$@"; }
make_image 64 48 "$RUN/small.png"
submit() { # submit FILE UPSCALE STEPS -> job id
    curl -sf -X POST "$API/v1/restore" -F image=@"$1" -F task=sr -F "upscale=$2" -F "steps=$3" -F seed=1 |
        "$PY" -c 'import json, sys; print(json.load(sys.stdin)["id"])'
}
status() { curl -sf "$API/v1/jobs/$1" | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["status"])'; }
wait_status() { # JOB WANTED SECONDS
    local deadline=$((SECONDS + $3)) now
    while :; do
        now=$(status "$1" || echo unknown)
        [ "$now" = "$2" ] && return 0
        case $now in succeeded | failed | canceled) die "job $1 is $now, wanted $2: $(curl -s "$API/v1/jobs/$1")" ;; esac
        [ $SECONDS -lt "$deadline" ] || die "job $1 still $now after $3 s (wanted $2)"
        sleep 0.5
    done
}
job=$(submit "$RUN/small.png" 2 4) || die "API did not accept the job"
log "API image: accepted job $job (status $(status "$job"))"

docker run -d --name $WORKER_NAME --network host --read-only --tmpfs /tmp --tmpfs /cache \
    -v "$RUN/weights:/weights:ro" "${common_env[@]}" \
    -e DIFFBIR_WORKER_PRESET=tiny -e DIFFBIR_WORKER_DEVICE=cpu -e DIFFBIR_WORKER_PRECISION=fp32 \
    -e "DIFFBIR_WORKER_METRICS_PORT=$METRICS_PORT" -e DIFFBIR_WORKER_METRICS_ADDR=127.0.0.1 \
    -e TORCHINDUCTOR_CACHE_DIR=/cache/inductor -e TRITON_CACHE_DIR=/cache/triton -e HOME=/tmp \
    -e OMP_NUM_THREADS=2 \
    $WORKER_IMAGE >/dev/null
started=$SECONDS
wait_status "$job" succeeded 300
log "worker image: job $job succeeded $((SECONDS - started))s after the worker container started"
curl -sf -o "$RUN/out.png" "$API/v1/jobs/$job/result" || die "fetching the result"
"$PY" -c 'import sys; from PIL import Image; im = Image.open(sys.argv[1]); assert im.size == (128, 96), im.size; print(im.format, im.size)' \
    "$RUN/out.png" >"$RUN/out.txt" || die "result is not the 2x image"
log "result: $(cat "$RUN/out.txt") (input 64x48, upscale 2)"

# The worker's readiness probe from deploy/k8s, run inside the real image.
probe=$(kubectl=$(command -v kubectl || echo .venv/bin/kubectl) && "$kubectl" kustomize deploy/k8s/base |
    "$PY" -c 'import sys, yaml
docs = [d for d in yaml.safe_load_all(sys.stdin) if d and d["kind"] == "Deployment" and d["metadata"]["name"] == "diffbir-worker"]
print(docs[0]["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["exec"]["command"][-1])')
docker exec $WORKER_NAME python -c "${probe//:9101\//:$METRICS_PORT/}" || die "k8s readiness probe failed in the worker image"
log "worker image: the k8s readiness probe passes (model loaded)"
wait_for 30 "API /readyz after the worker heartbeat" curl -sf "$API/readyz"
log "API image: /readyz $(curl -s "$API/readyz")"

# SIGTERM while a job runs: the worker must finish it, then exit 0 (Celery warm shutdown).
# ~10 s of sampling on 2 busy CPU cores: long enough to be mid-job when the signal lands.
job2=$(submit "$RUN/small.png" 2 12) || die "API did not accept the second job"
wait_status "$job2" running 60
docker kill --signal TERM $WORKER_NAME >/dev/null
stopped=$SECONDS
log "worker image: SIGTERM sent while job $job2 runs"
exit_code=$(timeout 300 docker wait $WORKER_NAME) || die "worker did not exit within 300s of SIGTERM"
final=$(status "$job2")
[ "$exit_code" = 0 ] && [ "$final" = succeeded ] ||
    die "after SIGTERM: exit code $exit_code, job $job2 $final (expected 0 and succeeded)"
log "worker image: finished job $job2 after SIGTERM, then exited 0 ($((SECONDS - stopped))s after the signal)"
log "OK in ${SECONDS}s"
