#!/usr/bin/env bash
# Build the image and run a qdtool command in it with the GPUs, data, runs and cache mounted.
#   scripts/docker_run.sh train --preset auto --data /data/train.jsonl
#   scripts/docker_run.sh probe-gpu
set -euo pipefail
docker build -t qdtool:latest .
mkdir -p data runs
docker run --rm -it --gpus all --shm-size 2g \
  -e WANDB_API_KEY -e HF_TOKEN -e PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True \
  -v "$PWD/data:/data" -v "$PWD/runs:/runs" -v qdtool-cache:/cache \
  qdtool:latest "${@:---help}"
