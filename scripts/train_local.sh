#!/usr/bin/env bash
# Train on this machine's GPU (or CPU) with settings planned for it, then merge and try it.
#   scripts/train_local.sh [DATA.jsonl] [MODEL]
# DATA defaults to the bundled examples; MODEL to what `qdtool probe-gpu` recommends.
set -euo pipefail
data="${1:-}"
model="${2:-}"
args=(--preset auto)
[ -n "$data" ] && args+=(--data "$data")
[ -n "$model" ] && args+=(--model "$model")
out="runs/local-$(date +%Y%m%d)"

qdtool probe-gpu ${model:+--model "$model"} ${data:+--data "$data"}   # what it will do, and why
if [ -f "$out/run_config.yaml" ]; then        # interrupted before: resume with the saved plan
  qdtool train --config "$out/run_config.yaml"
else
  qdtool train "${args[@]}" --output-dir "$out"
fi
qdtool merge "$out"
qdtool decompose --model "$out/merged" "Was Aristotle alive when the laptop was invented?"
