"""Training throughput: the seed-style baseline vs qdtool's step pipeline, side by side.

    python bench/train_throughput.py --shape embedded --samples 64            # CPU, the embedded model
    python bench/train_throughput.py --shape qwen2.5-7b --samples 256         # GPU, random weights
    python bench/train_throughput.py --shape llama-3.1-8b --quant 4bit        # GPU, QLoRA

Both sides train the same model on the same samples (StrategyQA train records through qdtool's
prompt renderer) on the same device, each in its own child process (so peak memory is its own),
one after the other in this one run. Figures, as ../shared/BENCH.md defines them:

- supervised tokens/s: answer tokens + EOS (what carries loss in qdtool's objective), counted the
  same way for both sides, over the wall time of the timed steps (after warm-up steps);
- peak memory: torch.cuda.max_memory_reserved() on GPU, the process's peak RSS on CPU;
- LoRA-MFU: 4 x parameters x processed non-pad tokens/s / peak bf16 FLOP/s (GPU only).

seed-style = HF Trainer-free replica of the old train.py's work per step: every sample padded to
512 tokens (256 for --low-memory), loss on every non-pad token (prompt included), LoRA r16/a32 on
q_proj,v_proj (r8/a16 low-memory), 4 samples per step (1 low-memory), fp32 on CPU / bf16 on GPU.
qdtool = core.training.step.train_step on packed rows (answer-only loss, LM head at answer positions),
LoRA r16/a32 on all linear layers, `--batch-tokens` tokens per step, in the precision `qdtool
train` picks on this machine (bf16 on GPUs and on CPUs with native bf16).
Results: a table on stdout and JSON lines appended to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAPES = {  # real architectures, random weights (BENCH.md)
    "qwen2.5-1.5b": dict(model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-7b": dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, vocab_size=152064),
    "llama-3.1-8b": dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256),
    "tiny": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=32000),
}
PEAK_BF16 = 989e12  # H100 SXM / H200 dense bf16


def load(shape: str, dtype, device: str, quant: str):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from qdtool.core.modeling import load_model, load_tokenizer, quantization_config

    if shape == "embedded":
        model = load_model("embedded", dtype=dtype, device_map={"": 0} if device == "cuda" else None,
                           quantization_config=quantization_config(quant, dtype))
        return model, load_tokenizer("embedded")
    spec = dict(SHAPES[shape])
    config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    if quant != "none":  # bitsandbytes quantizes on load: save random weights once, reload quantized
        cache = Path(os.environ.get("QDTOOL_BENCH_CACHE", "/tmp/qdtool-bench")) / shape
        if not (cache / "config.json").is_file():
            with torch.device("cuda"):
                AutoModelForCausalLM.from_config(config, dtype=dtype).save_pretrained(cache)
        model = AutoModelForCausalLM.from_pretrained(cache, dtype=dtype, device_map={"": 0},
                                                     quantization_config=quantization_config(quant, dtype))
    else:
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model, _tokenizer_for(config.vocab_size)


class _FoldedTokenizer:
    """The embedded tokenizer with ids folded into a smaller vocabulary (random-weight shapes need
    only ids of realistic length)."""

    def __init__(self, tokenizer, vocab_size: int) -> None:
        self._tokenizer, self._vocab = tokenizer, vocab_size

    def __call__(self, *args, **kwargs):
        out = self._tokenizer(*args, **kwargs)
        return {"input_ids": [i % self._vocab for i in out["input_ids"]]}

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def _tokenizer_for(vocab_size: int):
    from qdtool.core.modeling import load_tokenizer

    tokenizer = load_tokenizer("embedded")
    return _FoldedTokenizer(tokenizer, vocab_size) if vocab_size < len(tokenizer) else tokenizer


def samples(tokenizer, n: int):
    from qdtool.core.data import read_dataset
    from qdtool.core.prompts import encode_sample

    records = read_dataset(REPO / "examples" / "data" / "strategyqa_train.jsonl")[:n]
    return [encode_sample(tokenizer, r.question, r.sub_questions) for r in records]


def run_side(args) -> dict:
    import torch

    from qdtool.config import TrainConfig
    from qdtool.core.batching import IGNORE_INDEX, MicroBatch, pack
    from qdtool.core.distributed import Dist
    from qdtool.core.hardware import Device, select_device
    from qdtool.core.lora import add_lora
    from qdtool.core.training.step import loss_function, train_step

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.side == "seed":  # the old script: fp32 on CPU, bf16 on GPU
        precision = "fp32" if device == "cpu" else "bf16"
    else:  # whatever qdtool train picks here (bf16 on CPUs with native bf16)
        precision = select_device(TrainConfig(quantization=args.quant if args.quant != "none" else "none")).precision
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    torch.manual_seed(0)
    model, tokenizer = load(args.shape, dtype, device, args.quant)
    data = samples(tokenizer, args.samples)
    supervised = [sum(1 for x in s.labels if x != IGNORE_INDEX) for s in data]
    low = args.low_memory
    if args.side == "seed":
        config = TrainConfig(lora_r=8 if low else 16, lora_alpha=16 if low else 32, lora_target=["q_proj", "v_proj"], lora_dropout=0.05)
        width, per_step = (256 if low else 512), (1 if low else 4)
        steps = []
        for start in range(0, len(data), per_step):
            group = data[start : start + per_step]
            ids = [(s.input_ids + [tokenizer.pad_token_id] * width)[:width] for s in group]
            # DataCollatorForLanguageModeling(mlm=False): labels = input ids, pad -> -100 (prompt included)
            labels = [[t if k < len(s.input_ids) else IGNORE_INDEX for k, t in enumerate(row)] for s, row in zip(group, ids, strict=True)]
            mask = [[1 if k < len(s.input_ids) else 0 for k in range(width)] for s in group]
            steps.append(([MicroBatch(ids, labels, None, mask, len(group))], sum(supervised[start : start + per_step]),
                          sum(min(len(s.input_ids), width) for s in group)))
    else:
        config = TrainConfig(lora_r=16, lora_alpha=32, lora_target="all-linear", lora_dropout=0.05, batch_tokens=args.batch_tokens)
        rows = pack(data, args.batch_tokens)
        steps = [([row], row.supervised_tokens, row.tokens) for row in rows]
    if args.quant != "none":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=args.side == "seed",
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    model = add_lora(model, config)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    autocast = torch.autocast(device, dtype=dtype) if precision != "fp32" else None
    hardware = Device(device, precision, device)
    params = sum(p.numel() for p in model.parameters())
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    warm = args.warmup
    if len(steps) <= warm:
        raise SystemExit(f"{args.side}: only {len(steps)} step(s) from {len(data)} samples; pass more --samples")
    timed_supervised = timed_tokens = 0
    started = None
    for index, (micro, n_supervised, n_tokens) in enumerate(steps[: warm + args.steps]):
        if index == warm:
            if device == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
        if args.side == "seed":
            _seed_step(model, optimizer, micro[0], device, autocast)
        else:
            train_step(model, optimizer, scheduler, None, autocast, micro, config, hardware, index, Dist(), loss_function(model), False)
        if index >= warm:
            timed_supervised += n_supervised
            timed_tokens += n_tokens
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    if device == "cuda":
        peak = torch.cuda.max_memory_reserved() / 2**30
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    tokens_per_s = timed_tokens / seconds
    return {
        "side": args.side, "shape": args.shape, "quant": args.quant, "device": device, "precision": precision,
        "timed_steps": min(args.steps, len(steps) - warm), "seconds": round(seconds, 2),
        "supervised_tokens_per_s": round(timed_supervised / seconds, 2), "tokens_per_s": round(tokens_per_s, 1),
        "peak_memory_gib": round(peak, 3), "parameters": params,
        "lora_mfu": round(4 * params * tokens_per_s / PEAK_BF16, 4) if device == "cuda" else None,
    }


def _seed_step(model, optimizer, micro, device, autocast):
    """What HF Trainer does per step for the old script: full logits, mean CE over all labels."""
    import contextlib

    batch = micro.to_tensors(device)
    with autocast or contextlib.nullcontext():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"], use_cache=False)
    out.loss.backward()
    import torch

    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)  # Trainer's default
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="embedded", choices=["embedded", *SHAPES])
    parser.add_argument("--quant", default="none", choices=["none", "4bit"])
    parser.add_argument("--low-memory", action="store_true", help="seed-style low-memory recipe (len 256, batch 1, r8)")
    parser.add_argument("--samples", type=int, default=128, help="samples each side trains on (both see the same ones)")
    parser.add_argument("--batch-tokens", type=int, default=2048)
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps at the start of each side")
    parser.add_argument("--steps", type=int, default=10_000, help="at most this many timed steps per side")
    parser.add_argument("--side", choices=["seed", "qdtool"], help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks" / "train_throughput.jsonl"))
    args = parser.parse_args()
    if args.side:  # child process: one side, one JSON line on stdout
        print("RESULT " + json.dumps(run_side(args)), flush=True)
        return
    results = []
    for side in ("seed", "qdtool"):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--side", side]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = next((out for out in proc.stdout.splitlines() if out.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{side} side failed:\n{proc.stderr[-3000:]}")
        results.append(json.loads(line[7:]))
    import torch
    import transformers

    base, ours = results
    ratio = ours["supervised_tokens_per_s"] / base["supervised_tokens_per_s"]
    meta = {"bench": "train_throughput", "date": date.today().isoformat(), "torch": torch.__version__,
            "transformers": transformers.__version__, "samples": args.samples, "batch_tokens": args.batch_tokens,
            "low_memory": args.low_memory, "ratio_supervised_tokens_per_s": round(ratio, 2)}
    if ours["device"] == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(0)
    print(f"{'side':<8} {'sup tok/s':>10} {'tok/s':>9} {'peak GiB':>9} {'MFU':>6}  ({ours['shape']}, {ours['device']}, {ours['quant']})")
    for r in results:
        mfu = f"{r['lora_mfu']:.1%}" if r["lora_mfu"] is not None else "-"
        print(f"{r['side']:<8} {r['supervised_tokens_per_s']:>10.1f} {r['tokens_per_s']:>9.1f} {r['peak_memory_gib']:>9.2f} {mfu:>6}")
    print(f"ratio (qdtool / seed-style), supervised tokens/s: {ratio:.2f}x")
    with open(args.out, "a", encoding="utf-8") as f:
        for r in results:
            f.write(json.dumps({**meta, **r}) + "\n")


if __name__ == "__main__":
    main()
