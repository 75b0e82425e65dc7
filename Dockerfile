# syntax=docker/dockerfile:1
# The tensorgrade service in a container.
#   CPU (default): docker build -t tensorgrade .
#   CUDA:          docker build -t tensorgrade:cuda \
#                    --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#   Run:           docker run -p 8000:8000 tensorgrade
# Settings are TENSORGRADE_* environment variables (TENSORGRADE_WORKERS, _TORCH_THREADS...).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# Where torch comes from: the CPU build by default (a plain `pip install torch` would fetch
# a multi-GB CUDA build); a CUDA index for the GPU image.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# torch in its own layer: it is most of the image and changes least often.
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY models ./models
COPY service ./service
# The project with its runtime dependencies (and the Redis client, for rate limits shared by
# replicas; no dev extra), not editable: /src stays here.
RUN /opt/venv/bin/pip install --no-cache-dir ".[redis]"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="tensorgrade" \
      org.opencontainers.image.description="Reference answers and checking for a CNN/RNN homework"
# A numeric user with a passwd entry (torch asks the user's name for its cache folders).
RUN groupadd --gid 10001 tensorgrade \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin tensorgrade
COPY --from=build /opt/venv /opt/venv
# PROMETHEUS_MULTIPROC_DIR: the workers' metrics add up (emptied by `tensorgrade serve`).
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TENSORGRADE_HOST=0.0.0.0 \
    TENSORGRADE_PORT=8000 \
    TENSORGRADE_WORKERS=1 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/tensorgrade-metrics
USER 10001:10001
EXPOSE 8000
# Python's urllib against /healthz: no curl in the image.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["tensorgrade", "healthcheck"]
# uvicorn with TENSORGRADE_WORKERS workers, each with TENSORGRADE_TORCH_THREADS torch threads.
CMD ["tensorgrade", "serve"]
