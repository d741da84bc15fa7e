# syntax=docker/dockerfile:1
# qdtool on a CUDA GPU. Build: docker build -t qdtool .   Run: scripts/docker_run.sh (or docker compose).
# PyPI's Linux torch wheels are CUDA builds that bring their own CUDA libraries; the base image only
# needs the driver interface, so the slim CUDA "base" image is enough.
FROM nvidia/cuda:12.8.1-base-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HF_HOME=/cache/huggingface \
    QDTOOL_CACHE=/cache/qdtool \
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv git ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

# torch first, pinned (as the README says: torch before qdtool)
RUN pip install torch==2.13.0

WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
COPY configs ./configs
COPY examples ./examples
RUN pip install .

RUN useradd --create-home --uid 1000 qdtool \
    && mkdir -p /cache /data /runs \
    && chown -R qdtool:qdtool /cache /data /runs /app
USER 1000:1000
WORKDIR /runs
VOLUME ["/cache", "/data", "/runs"]

ENTRYPOINT ["qdtool"]
CMD ["--help"]
