"""Batched vs one-at-a-time decomposition: questions/s on the same model, inputs and settings.

    python bench/decode_throughput.py --model embedded --questions 32 --batch-size 16

Both sides run `qdtool.core.generation.decompose` (greedy, stop at EOS) in this one process; the
only difference is `batch_size`. Prints a table and appends one JSON line per side to --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded", help="run dir, merged dir, hub id or 'embedded'")
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--data", default=str(REPO / "examples" / "data" / "strategyqa_val.jsonl"))
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks" / "decode_throughput.jsonl"))
    args = parser.parse_args()

    import torch
    import transformers

    from qdtool.core.generation import GenerationSettings, decompose, load_decomposer

    rows = [json.loads(line) for line in Path(args.data).read_text(encoding="utf-8").splitlines()[: args.questions]]
    rows = [{"id": r.get("id"), "question": r["question"]} for r in rows]
    decomposer = load_decomposer(args.model)
    device = str(next(decomposer.model.parameters()).device)
    decompose(decomposer, rows[:2], GenerationSettings(max_new_tokens=8, batch_size=2))  # warm-up

    results = []
    for label, batch_size in (("one at a time", 1), (f"batched ({args.batch_size})", args.batch_size)):
        settings = GenerationSettings(max_new_tokens=args.max_new_tokens, batch_size=batch_size)
        started = time.perf_counter()
        outputs = decompose(decomposer, rows, settings)
        seconds = time.perf_counter() - started
        results.append({
            "bench": "decode_throughput", "side": label, "batch_size": batch_size, "questions": len(rows),
            "seconds": round(seconds, 2), "questions_per_s": round(len(rows) / seconds, 3),
            "parse_ok": sum(o.parse_ok for o in outputs), "model": args.model, "device": device,
            "max_new_tokens": args.max_new_tokens, "torch": torch.__version__, "transformers": transformers.__version__,
            "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(), "date": date.today().isoformat(),
        })
    ratio = results[1]["questions_per_s"] / results[0]["questions_per_s"]
    for r in results:
        r["speedup_vs_one_at_a_time"] = round(r["questions_per_s"] / results[0]["questions_per_s"], 2)
    print(f"{'side':<16} {'questions/s':>12} {'seconds':>9} {'parse_ok':>9}")
    for r in results:
        print(f"{r['side']:<16} {r['questions_per_s']:>12.3f} {r['seconds']:>9.1f} {r['parse_ok']:>6}/{r['questions']}")
    print(f"speed-up: {ratio:.2f}x ({device}, {args.model}, {len(rows)} questions, max {args.max_new_tokens} new tokens)")
    with open(args.out, "a", encoding="utf-8") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
