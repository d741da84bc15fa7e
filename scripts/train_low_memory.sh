#!/usr/bin/env bash
# RTX 4060 8 GB (or any 8 GB GPU): the seed's low-memory recipe with qdtool's packing.
#   scripts/train_low_memory.sh DATA.jsonl [MODEL]
set -euo pipefail
data="${1:?usage: scripts/train_low_memory.sh DATA.jsonl [MODEL]}"
model="${2:-Qwen/Qwen2.5-7B-Instruct}"
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"

qdtool validate-data "$data"
qdtool train --config configs/low_memory.yaml --model "$model" --data "$data" --output-dir runs/low-memory
qdtool merge runs/low-memory --dtype bf16
