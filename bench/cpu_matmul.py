"""fp32 vs bf16 matrix products on this CPU: the case for `precision: auto` = bf16 on CPUs with it.

    python bench/cpu_matmul.py

Times a 2048x640 @ 640x2048 product (the embedded model's projection sizes) and an LM head over
700 answer positions (700x640 @ 640x262144), 20 and 3 repetitions after a warm-up.
"""

from __future__ import annotations

import time

import torch


def bench(a: torch.Tensor, b: torch.Tensor, repeats: int) -> float:
    a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return (time.perf_counter() - started) / repeats


def main() -> None:
    from qdtool.core.hardware import cpu_has_fast_bf16

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, native bf16: {cpu_has_fast_bf16()}")
    cases = [("projection 2048x640 @ 640x2048", (2048, 640), (640, 2048), 20),
             ("LM head 700x640 @ 640x262144", (700, 640), (640, 262144), 3)]
    for name, left, right, repeats in cases:
        a, b = torch.randn(*left), torch.randn(*right)
        flops = 2 * left[0] * left[1] * right[1]
        row = []
        for dtype in (torch.float32, torch.bfloat16):
            seconds = bench(a.to(dtype), b.to(dtype), repeats)
            row.append(seconds)
            print(f"{name:<32} {str(dtype):<15} {seconds * 1000:9.1f} ms {flops / seconds / 1e9:8.1f} GFLOP/s")
        print(f"{'':<32} bf16 speed-up: {row[0] / row[1]:.2f}x")


if __name__ == "__main__":
    main()
