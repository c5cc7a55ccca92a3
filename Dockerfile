# The image every pod of k8s/ runs: Ray head and workers, the RayJob submitter and the MLflow server.
#   docker build -t REGISTRY/imagelora-dist:0.1.0 .
#   docker push REGISTRY/imagelora-dist:0.1.0
# (k8s/README.md, "Image"). CUDA 12.8 runtime + cuDNN; the same image runs on CPU-only nodes.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LANG=C.UTF-8

# Python 3.11 (the tested version), wget for KubeRay's health probes of older Ray versions.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates wget \
    && rm -rf /var/lib/apt/lists/*

# The non-root user every container runs as (k8s/: runAsUser 1000, fsGroup 1000).
RUN groupadd --gid 1000 ray \
    && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/ray --shell /bin/bash ray

RUN python3.11 -m venv /opt/venv
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN pip install "pip==26.3" "setuptools==84.2.1" "wheel==0.48.0"

# torch first, from the PyTorch CUDA index: installed alone, pip would resolve a different torch build.
# TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu gives a smaller CPU-only image.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
RUN pip install --index-url "$TORCH_INDEX_URL" "torch==2.13.0"

# The package, with every dependency at the version it was tested with; psycopg2-binary (PostgreSQL) and
# boto3 (S3 artifacts) for the MLflow server.
WORKDIR /app
COPY k8s/image/constraints.txt /app/k8s/image/constraints.txt
COPY pyproject.toml README.md /app/
COPY imagelora_dist/ /app/imagelora_dist/
RUN pip install -c /app/k8s/image/constraints.txt /app "psycopg2-binary==2.9.13" "boto3==1.44.8" \
    && pip check

# Run configs (the RayJobs use /app/configs/...) and the launch scripts.
COPY configs/ /app/configs/
COPY launch/ /app/launch/

# Offline and no telemetry for every process (the RayJob runtime env repeats them for the job).
ENV HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=true \
    RAY_USAGE_STATS_ENABLED=0 \
    TOKENIZERS_PARALLELISM=false \
    HOME=/home/ray

USER 1000:1000
WORKDIR /app
CMD ["python", "-m", "imagelora_dist", "--help"]
