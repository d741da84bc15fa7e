#!/usr/bin/env bash
# RunPod (or any cloud GPU that can be preempted): everything lives on the /workspace volume, and
# running this script again after a preemption resumes from the last checkpoint.
#   scripts/train_runpod.sh DATA.jsonl [MODEL]
set -euo pipefail
data="${1:?usage: scripts/train_runpod.sh DATA.jsonl [MODEL]}"
model="${2:-}"
export HF_HOME=/workspace/cache/huggingface          # model downloads survive the pod
export QDTOOL_CACHE=/workspace/cache/qdtool
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
out=/workspace/runs/runpod

qdtool probe-gpu ${model:+--model "$model"} --data "$data"
# SIGTERM on preemption: qdtool saves a checkpoint and exits 143. Running this script again resumes
# with the saved configuration (a new pod may have other free memory; the plan must not change).
if [ -f "$out/run_config.yaml" ]; then
  qdtool train --config "$out/run_config.yaml"
else
  qdtool train --preset auto ${model:+--model "$model"} --data "$data" --output-dir "$out" --save-steps 25
fi
qdtool merge "$out" --output /workspace/models/decomposer
