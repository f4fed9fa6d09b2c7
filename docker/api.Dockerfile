# syntax=docker/dockerfile:1
# API image: FastAPI + the torch-free shared core only (`.[api]`). It never installs torch, so it stays small
# and starts in seconds; the GPU stack lives in worker.Dockerfile.
# Exact tag (not a floating `3.11-slim`) so a rebuild gets the same interpreter (tests/deploy checks the
# default is pinned). PYTHON_IMAGE exists for builds that cannot pull: any Debian-like image with Python 3.11,
# `python` on PATH and the venv module will do (scripts/image_smoke.sh builds one with debootstrap).
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# Dependencies first, in their own layer, so a code change does not reinstall them. Only the core and the
# `api` extra; constraints.txt pins every transitive version.
COPY pyproject.toml constraints.txt README.md docker/pyproject_requirements.py ./
RUN python pyproject_requirements.py api > requirements.txt \
    && pip install --no-cache-dir --requirement requirements.txt --constraint constraints.txt
COPY common ./common
COPY service ./service
# The project itself (non-editable); the build fails if torch got in by any route.
RUN pip install --no-cache-dir --no-deps . \
    && python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="diffbir-api" \
      org.opencontainers.image.description="DiffBIR restoration service: HTTP API (no torch)"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DIFFBIR_HOST=0.0.0.0 \
    DIFFBIR_PORT=8000
RUN groupadd --system --gid 10001 diffbir \
    && useradd --system --uid 10001 --gid diffbir --no-create-home --home-dir /nonexistent diffbir
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
USER 10001:10001
EXPOSE 8000
# No curl in a slim image: the stdlib client is enough for a liveness probe.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('DIFFBIR_PORT', '8000'), timeout=2)"]
CMD ["python", "-m", "service"]
