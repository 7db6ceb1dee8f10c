# syntax=docker/dockerfile:1
#
# streamrnn detector image.
#
# Default: CPU-only torch on python:3.11-slim.
#   docker build -t streamrnn .
#
# CUDA: a CUDA runtime base and the CUDA wheel index of the same torch version (constraints.txt).
#   docker build -t streamrnn:cuda \
#     --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#   docker run --gpus all ... streamrnn:cuda
# A base without Python (the nvidia/cuda images) gets the distribution's python3 (>= 3.10).
# Build and runtime stages share the base, so the virtual environment's interpreter path matches.

ARG BASE_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DEBIAN_FRONTEND=noninteractive

RUN set -eux; \
    if ! command -v python3 >/dev/null 2>&1 || ! python3 -c "import venv, ensurepip" >/dev/null 2>&1; then \
        apt-get update; \
        apt-get install -y --no-install-recommends python3 python3-venv ca-certificates; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    python3 -c "import sys; assert sys.version_info >= (3, 10), sys.version"

# ---------------------------------------------------------------------------------------------
FROM base AS build

# Where torch comes from: the CPU wheels by default, e.g. .../whl/cu128 for CUDA 12.8.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# torch first, from its own index and pinned by the constraints file, in a layer of its own
# (it is by far the largest and changes least). A local version such as 2.13.0+cpu satisfies
# the ==2.13.0 pin, so the second install below keeps it instead of fetching PyPI's CUDA build.
COPY constraints.txt ./
RUN pip install --upgrade pip \
 && pip install --index-url "${TORCH_INDEX_URL}" -c constraints.txt torch

COPY pyproject.toml README.md* ./
COPY streamrnn ./streamrnn
RUN pip install -c constraints.txt . \
 && python -c "import torch, streamrnn; print('torch', torch.__version__, 'streamrnn', streamrnn.__version__)"

# ---------------------------------------------------------------------------------------------
FROM base AS runtime

RUN set -eux; \
    groupadd --system --gid 10001 streamrnn; \
    useradd --system --uid 10001 --gid streamrnn --home-dir /var/lib/streamrnn \
        --no-create-home --shell /usr/sbin/nologin streamrnn; \
    mkdir -p /var/lib/streamrnn /etc/streamrnn; \
    chown -R streamrnn:streamrnn /var/lib/streamrnn

COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/var/lib/streamrnn

LABEL org.opencontainers.image.title="streamrnn" \
      org.opencontainers.image.description="Real-time anomaly detection for Kafka streams with stateful LSTM/GRU forecasters" \
      org.opencontainers.image.licenses="Apache-2.0"

WORKDIR /var/lib/streamrnn
# State checkpoints (mount a volume here); the config is mounted at /etc/streamrnn.
VOLUME ["/var/lib/streamrnn"]

# Numeric user so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001

# Prometheus metrics, /healthz and /readyz.
EXPOSE 9108

# No curl in the slim image: the health check is a few lines of Python.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request; r = urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=4); sys.exit(0 if r.status == 200 else 1)"]

ENTRYPOINT ["streamrnn"]
CMD ["run", "--config", "/etc/streamrnn/config.yaml"]
