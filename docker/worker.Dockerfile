# syntax=docker/dockerfile:1
# GPU worker image: Celery worker + the PyTorch model stack (`.[worker]`), CUDA 12.8.
#
# Python comes from uv's standalone CPython builds rather than apt: Ubuntu's python3 is 3.10 on 22.04 (too old
# for this project) and apt pins drift out of the archive. Torch comes from the PyTorch CUDA wheel index; its
# wheels carry their own CUDA runtime, cuBLAS and cuDNN as pip packages, so the runtime stage only needs the
# NVIDIA "base" image (driver hooks for the NVIDIA container toolkit), not a second copy of cuDNN.
#
# Build args pin every moving part:
#   docker build -f docker/worker.Dockerfile --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 .
# CUDA_IMAGE, UV_IMAGE and UV_PYTHON_PREFERENCE exist for builds that cannot pull those images or uv's Python
# downloads: scripts/image_smoke.sh passes a local Debian base with its own python3.11 (only-system) and a
# local image holding the uv binary from PyPI. The defaults are what a real build uses.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.9.5

FROM ${UV_IMAGE} AS uv

FROM ${CUDA_IMAGE} AS builder
ARG PYTHON_VERSION=3.11
ARG UV_PYTHON_PREFERENCE=only-managed
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=${UV_PYTHON_PREFERENCE} \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1
WORKDIR /src
# only-managed (default): uv downloads its standalone CPython into /opt/python. only-system: the base image's
# own interpreter, and /opt/python stays empty (the runtime stage copies it either way).
RUN mkdir -p /opt/python \
    && uv venv --python "${PYTHON_VERSION}" /opt/venv
# Torch alone first, from the CUDA index, so the later install sees it satisfied and never pulls the
# default (different CUDA) build from PyPI.
RUN uv pip install --python /opt/venv/bin/python --index-url "${TORCH_INDEX_URL}" \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"
COPY pyproject.toml constraints.txt README.md docker/pyproject_requirements.py ./
# Dependencies in their own layer (a code change does not reinstall them). constraints.txt pins the CPU/CI
# torch and its CUDA pip packages: drop those so they cannot fight the CUDA-index build above, keep every
# other exact pin.
RUN grep -vE '^(torch|torchvision|triton|nvidia-|cuda-)' constraints.txt > constraints-image.txt \
    && /opt/venv/bin/python pyproject_requirements.py worker > requirements.txt \
    && uv pip install --python /opt/venv/bin/python --requirement requirements.txt \
        --constraint constraints-image.txt
# facexlib (the unaligned_face task's detector and parser nets) without its declared dependencies: it asks
# for the GUI opencv-python (libGL; it overwrites the headless cv2 of the worker extra, which lists what
# facexlib imports).
RUN uv pip install --python /opt/venv/bin/python --no-deps --constraint constraints-image.txt facexlib
COPY common ./common
COPY model ./model
COPY worker ./worker
RUN uv pip install --python /opt/venv/bin/python --no-deps . \
    && /opt/venv/bin/python -c "import torch; assert torch.version.cuda, 'expected a CUDA build of torch'"

FROM ${CUDA_IMAGE} AS runtime
LABEL org.opencontainers.image.title="diffbir-worker" \
      org.opencontainers.image.description="DiffBIR restoration service: GPU worker"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    DIFFBIR_WEIGHTS_DIR=/weights \
    DIFFBIR_WORKER_DEVICE=cuda \
    DIFFBIR_WORKER_METRICS_PORT=9101 \
    HF_HOME=/weights/.cache/huggingface
# torch.compile (DIFFBIR_WORKER_COMPILE, on in docker-compose.yml) runs Triton, which builds its small CUDA
# launcher with a C compiler at first use. Not version-pinned on purpose: Ubuntu drops superseded package
# versions from its archive, so a pin breaks rebuilds; the base image tag fixes the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 diffbir \
    && useradd --system --uid 10001 --gid diffbir --no-create-home --home-dir /nonexistent diffbir \
    && mkdir -p /weights \
    && chown 10001:10001 /weights
# Same paths as in the builder: the venv's interpreter symlink points into /opt/python.
COPY --from=builder /opt/python /opt/python
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
USER 10001:10001
# Weights (several GB) are never baked in: mount them, or fill the volume once with
# `docker compose run --rm worker python -m model download --version v2`.
VOLUME ["/weights"]
EXPOSE 9101
# The worker's Prometheus endpoint is up once the process runs; model loading can take minutes, hence the
# long start period.
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/metrics' % os.environ.get('DIFFBIR_WORKER_METRICS_PORT', '9101'), timeout=4)"]
CMD ["python", "-m", "worker"]
