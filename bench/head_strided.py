"""The LM head on a strided view vs a contiguous copy: why `load_decomposer` adds a pre-hook.

    python bench/head_strided.py                 # embedded Gemma 3 270M head, bf16 on CPU

transformers runs the head on `hidden[:, -1:, :]` in the first step of `generate`. With frozen
weights (no autograd), torch sends that strided 3-D input to a batched matmul that copies the
weight once per row. Prints the seconds for both inputs (same values, checked) and appends a JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=16, help="prompts in the batch")
    parser.add_argument("--length", type=int, default=71, help="prompt tokens (the first 16 validation prompts pad to 71)")
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks" / "head_strided.jsonl"))
    args = parser.parse_args()

    import torch

    from qdtool.core.modeling import load_model

    head = load_model("embedded", dtype=torch.bfloat16).get_output_embeddings().requires_grad_(False)
    hidden = torch.randn(args.rows, args.length, head.in_features, dtype=torch.bfloat16)
    view = hidden[:, -1:, :]
    seconds = {}
    with torch.no_grad():
        for label, x in (("contiguous copy", view.contiguous()), ("strided view", view)):
            head(x)  # warm-up
            started = time.perf_counter()
            out = head(x)
            seconds[label] = time.perf_counter() - started
            torch.testing.assert_close(out, head(view.contiguous()))
    row = {"bench": "head_strided", "rows": args.rows, "length": args.length, "dtype": "bf16", "torch": torch.__version__,
           "threads": torch.get_num_threads(), "date": date.today().isoformat(),
           **{f"{k.replace(' ', '_')}_s": round(v, 4) for k, v in seconds.items()}}
    for label, value in seconds.items():
        print(f"{label:<16} {value:8.3f} s")
    print(f"strided / contiguous: {seconds['strided view'] / seconds['contiguous copy']:.0f}x")
    with open(args.out, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
