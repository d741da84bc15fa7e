"""Turn a GGUF file into a safetensors model directory that `qdtool train --model DIR` loads offline.

    python bench/gguf_model.py MODEL.gguf OUT_DIR
    python bench/recipe_search.py --candidates default --out /tmp/other -- --model OUT_DIR

For measuring another base model on a machine without the hub: some GGUF files reach such a machine
through a package registry, as the embedded model does. transformers reads the file dequantized to
float32 (its architecture must be one transformers can read from GGUF: llama, qwen2, gemma3, ...);
the weights and the tokenizer (with its chat template, when the file has one) are written as
safetensors. The weights are those of the quantized file, not of the original checkpoint: a model
quantized to 4-5 bits loses a little of what it knew, so a result measured on it bounds the original
from below.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def convert(gguf: Path, out: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # the weights are plain float32 now; save_pretrained refuses a model that still carries its GGUF quantizer
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    info = {
        "source": str(gguf.resolve()),
        "architecture": model.config.model_type,
        "parameters": sum(p.numel() for p in model.parameters()),
        "chat_template": bool(getattr(tokenizer, "chat_template", None)),
        "seconds": round(time.perf_counter() - start, 1),
    }
    (out / "gguf_source.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("gguf", type=Path, help="the .gguf file")
    parser.add_argument("out", type=Path, help="the model directory to write (must not exist)")
    args = parser.parse_args()
    if not args.gguf.is_file():
        parser.error(f"{args.gguf}: no such file")
    if args.out.exists():
        parser.error(f"{args.out} exists; give a new directory")
    print(json.dumps(convert(args.gguf, args.out), indent=2))


if __name__ == "__main__":
    main()
