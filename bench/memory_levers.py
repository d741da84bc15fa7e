"""One lever at a time: what each memory setting does to a CPU training step's resident memory.

    python bench/memory_levers.py --steps 5                               # today's defaults
    python bench/memory_levers.py --steps 5 --fixed-mmap                   # glibc's mmap threshold fixed at 1 MiB
    python bench/memory_levers.py --steps 5 --batch-tokens 2048 --grad-accum 1
    python bench/memory_levers.py --steps 8 --same-batch                   # one row shape, repeated
    python bench/memory_levers.py --steps 8 --row-multiple 1               # free row lengths

In this process: the embedded model with LoRA (as `qdtool train` builds it), the bundled training
data packed as `qdtool train` packs it, and plain optimizer steps. Before each step the kernel's
peak counter is reset (/proc/self/clear_refs), so each line shows that step's own peak RSS, the RSS
it started from and the RSS it left behind. A flat "after" column is a flat run.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


def fix_mmap_threshold(threshold: int = 1 << 20) -> None:
    """Fix glibc's mmap threshold, which also turns its dynamic raising off: every freed block over
    `threshold` goes back to the system at once (flat RSS), and every new one is faulted in again
    (slow: 19.5 s a step vs 11.5 s on the embedded model, docs/benchmarks.md)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if not libc.mallopt(M_MMAP_THRESHOLD, threshold):
        raise SystemExit("mallopt(M_MMAP_THRESHOLD) failed: not glibc?")


def _kib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-tokens", type=int, default=1024)
    parser.add_argument("--grad-accum", type=int, default=2)
    parser.add_argument("--lora-dropout", type=float, default=0.05)
    parser.add_argument("--row-multiple", type=int, default=None, help="pad packed rows to this multiple [batching.ROW_MULTIPLE]")
    parser.add_argument("--chunk-rows", type=int, default=None, help="LM head rows per chunk [loss.chunk_rows: 32 for Gemma]")
    parser.add_argument("--fixed-mmap", action="store_true", help="fix glibc's mmap threshold at 1 MiB (default: glibc's dynamic one)")
    parser.add_argument("--same-batch", action="store_true", help="repeat the first step's micro-batches (one set of shapes)")
    args = parser.parse_args()

    if args.fixed_mmap:
        fix_mmap_threshold()
    import torch

    from qdtool.config import TrainConfig
    from qdtool.core import batching, hardware, lora, modeling
    from qdtool.core.data import read_dataset
    from qdtool.core.loss import answer_loss_sum
    from qdtool.core.training.optim import build_optimizer

    if args.chunk_rows:
        import qdtool.core.loss as loss_module

        loss_module.CHUNK_BYTES = args.chunk_rows * 4 * 262_144  # rows of Gemma's vocabulary
    config = TrainConfig(batch_tokens=args.batch_tokens, grad_accum=args.grad_accum, lora_dropout=args.lora_dropout)
    device = hardware.select_device(config)
    tokenizer = modeling.load_tokenizer("embedded")
    model = lora.add_lora(modeling.load_base_model(config, device), config)
    print(f"after load: {_kib('VmRSS'):.2f} GiB ({device.precision}, batch_tokens {args.batch_tokens} x {args.grad_accum}, "
          f"lora_dropout {args.lora_dropout}, mmap threshold {'fixed' if args.fixed_mmap else 'dynamic'})")
    records = read_dataset(REPO / "examples" / "data" / "strategyqa_train.jsonl")
    samples = batching.encode_records(records, tokenizer, config.max_seq_len, "drop", prompt=config.prompt_options()).samples
    if args.row_multiple is not None:
        batching.ROW_MULTIPLE = args.row_multiple
    plan = batching.BatchPlan(samples, 0, True, args.batch_tokens, config.batch_size, tokenizer.pad_token_id or 0, args.grad_accum)
    optimizer = build_optimizer(model, config, device)
    autocast = torch.autocast("cpu", dtype=device.dtype) if device.precision != "fp32" else None
    model.train()
    first = None
    print(f"{'step':>4} {'rows':>4} {'tokens':>6} {'start GiB':>9} {'peak GiB':>8} {'after GiB':>9} {'seconds':>7}")
    for step, _epoch, micro in plan.steps(0):
        if step >= args.steps:
            break
        first = first or micro
        micro = first if args.same_batch else micro
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM
        start, began = _kib("VmRSS"), time.perf_counter()
        n = sum(mb.supervised_tokens for mb in micro)
        for mb in micro:
            with autocast or torch.autocast("cpu", enabled=False):
                loss, _ = answer_loss_sum(model, mb.to_tensors("cpu"))
            (loss / n).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        print(f"{step:>4} {len(micro):>4} {sum(mb.tokens for mb in micro):>6} {start:>9.2f} {_kib('VmHWM'):>8.2f} "
              f"{_kib('VmRSS'):>9.2f} {time.perf_counter() - began:>7.1f}", flush=True)


if __name__ == "__main__":
    main()
