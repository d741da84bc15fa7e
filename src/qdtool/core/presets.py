"""Presets: named YAML recipes per memory tier, and `auto`, which picks the fastest settings whose
estimated peak memory fits the GPU it finds (with a safety margin)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qdtool.core.hardware import HardwareReport, decide_precision
from qdtool.core.memory import MemoryEstimate, Shape, estimate
from qdtool.errors import ConfigError, ModelError

TIERS = ("cpu", "8gb", "12gb", "16gb", "24gb", "48gb", "80gb")
SAFETY_MARGIN = 0.08  # share of free memory left unused by `auto`
TOKENS_PER_STEP = 16384  # effective tokens per optimizer step that `auto` keeps via grad_accum
BATCH_TOKENS = (16384, 8192, 4096, 2048, 1024, 512, 256)

# Shapes of the models the tiers recommend, so that `auto` needs no download to plan.
KNOWN_SHAPES = {
    "embedded": Shape(640, 2048, 18, 4, 1, 256, 262144, True),
    "Qwen/Qwen2.5-0.5B-Instruct": Shape(896, 4864, 24, 14, 2, 64, 151936, True),
    "Qwen/Qwen2.5-1.5B-Instruct": Shape(1536, 8960, 28, 12, 2, 128, 151936, True),
    "Qwen/Qwen2.5-7B-Instruct": Shape(3584, 18944, 28, 28, 4, 128, 152064, False),
    "Qwen/Qwen2.5-14B-Instruct": Shape(5120, 13824, 48, 40, 8, 128, 152064, False),
    "meta-llama/Llama-3.1-8B-Instruct": Shape(4096, 14336, 32, 32, 8, 128, 128256, False),
}
# (largest GPU memory in GiB, the tier it belongs to); the tier's preset names its model.
_TIER_BY_MEMORY = ((10, "8gb"), (14, "12gb"), (20, "16gb"), (32, "24gb"), (64, "48gb"), (math.inf, "80gb"))


def presets_dir() -> Path:
    from qdtool.resources import configs_dir

    return configs_dir() / "presets"


def load_preset(name: str) -> dict[str, Any]:
    """A named preset's settings (a TrainConfig fragment)."""
    import yaml

    path = presets_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset '{name}': choose auto or one of {', '.join(TIERS)}")
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def tier_for(total_gib: float) -> str:
    return next(tier for limit, tier in _TIER_BY_MEMORY if total_gib < limit)


def model_shape(model: str) -> Shape:
    """The architecture of a model spec, from its config only (no weights)."""
    if model in KNOWN_SHAPES:
        return KNOWN_SHAPES[model]
    from transformers import AutoConfig

    from qdtool.core.modeling import resolve_model

    source = resolve_model(model)
    try:
        config = AutoConfig.from_pretrained(source.location)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read the config of '{model}' to estimate memory: {exc}") from exc
    return Shape.from_config(config)


@dataclass
class PresetChoice:
    name: str
    settings: dict[str, Any]
    estimate: MemoryEstimate | None
    budget_gib: float | None
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "settings": self.settings, "budget_gib": self.budget_gib, "reasons": self.reasons,
                "estimate": self.estimate.to_dict() if self.estimate else None}


def _speed(quantization: str, checkpointing: bool, batch_tokens: int) -> float:
    """Relative throughput used to rank settings that fit: GPUs saturate around 4k tokens per
    micro-batch; checkpointing recomputes the forward (~0.75x); 4-bit dequantizes every matmul (~0.6x)."""
    return min(batch_tokens, 4096) / 4096 * (0.75 if checkpointing else 1.0) * (0.6 if quantization == "4bit" else 1.0) \
        + batch_tokens * 1e-9  # ties: prefer the larger batch


def _fastest_fit(shape: Shape, budget: float, max_seq_len: int, supervised_share: float, lora_r: int,
                 precision: str, shards: int = 1) -> tuple[dict[str, Any], MemoryEstimate] | None:
    """The highest-ranked settings whose estimate fits `budget` GiB, or None. With `shards` > 1
    the plan is FSDP over that many GPUs (16-bit weights only: qdtool does not shard 4-bit ones)."""
    best: tuple[float, dict[str, Any], MemoryEstimate] | None = None
    for quantization in ("none", "4bit") if shards == 1 else ("none",):
        for checkpointing in (False, True):
            for batch_tokens in BATCH_TOKENS:
                if batch_tokens < max_seq_len:
                    continue
                # FSDP: the plain (foreach) AdamW, the one the sharded tests run
                optimizer = ("adamw" if shards > 1 else "adamw_fused") if quantization == "none" else "paged_adamw_8bit"
                est = estimate(shape, quantization=quantization, lora_r=lora_r, optimizer=optimizer, batch_tokens=batch_tokens,
                               supervised_share=supervised_share, gradient_checkpointing=checkpointing, precision=precision,
                               shards=shards)
                if est.total_gib > budget:
                    continue
                score = _speed(quantization, checkpointing, batch_tokens)
                if best is None or score > best[0]:
                    settings = {"quantization": quantization, "gradient_checkpointing": checkpointing, "batch_tokens": batch_tokens,
                                "max_seq_len": max_seq_len, "optimizer": optimizer, "grad_accum": max(1, TOKENS_PER_STEP // batch_tokens),
                                "packing": True, "lora_r": lora_r, "lora_alpha": 2 * lora_r}
                    if shards > 1:
                        settings["sharding"] = "fsdp"
                    best = (score, settings, est)
    return None if best is None else (best[1], best[2])


def choose_auto(hardware: HardwareReport, *, model: str | None = None, p99_tokens: int | None = None,
                supervised_share: float = 0.4, lora_r: int = 16) -> PresetChoice:
    """The fastest settings whose estimated peak fits the smallest GPU here (every GPU holds a full
    copy under DDP); with several GPUs and a model that fits none of them even in 4-bit, FSDP over
    all of them; on a machine without GPU, the cpu preset.

    Raises:
        ConfigError: the model does not fit even in 4-bit with checkpointing and 256-token rows.
    """
    max_seq_len = min(2048, max(128, math.ceil(p99_tokens / 64) * 64)) if p99_tokens else 512
    reasons = [f"max_seq_len {max_seq_len}: " + (f"the data's p99 sample is {p99_tokens} tokens, rounded up to a multiple of 64"
                                                 if p99_tokens else "no data given, the default")]
    if not hardware.gpus:
        settings = load_preset("cpu")
        if model:
            settings["model"] = model
        precision = decide_precision("auto", "cpu")
        est = estimate(model_shape(settings["model"]), precision=precision, optimizer="adamw", batch_tokens=settings["batch_tokens"],
                       supervised_share=supervised_share, lora_r=lora_r)
        est.total_gib -= est.cuda_context_gib
        est.cuda_context_gib = 0.0
        return PresetChoice("cpu", settings, est, hardware.ram_gib, [
            f"no CUDA GPU: the cpu preset ({precision} on this CPU, no quantization)",
            f"estimated training memory {est.total_gib:.1f} GiB of {hardware.ram_gib:.1f} GiB RAM (weights, LoRA, activations, logits)",
        ])
    smallest = min(hardware.gpus, key=lambda g: g.free_gib)
    tier = tier_for(max(g.total_gib for g in hardware.gpus))
    budget = smallest.free_gib * (1 - SAFETY_MARGIN)
    precision = decide_precision("auto", "cuda", bf16=smallest.bf16)
    reasons.insert(0, f"{len(hardware.gpus)} GPU(s); planning for GPU {smallest.index} ({smallest.name}, {smallest.free_gib:.1f} GiB free): "
                      f"budget {budget:.1f} GiB after a {SAFETY_MARGIN:.0%} margin")
    if model:
        candidates = [(model, "given")]
    else:  # the tier's model, then smaller tiers' models if it does not fit what is free
        tiers = [t for t in TIERS[1 : TIERS.index(tier) + 1]][::-1]
        candidates = list(dict.fromkeys((load_preset(t)["model"], f"the {t} tier's recommendation (Apache-2.0)") for t in tiers))
    best = None
    n = len(hardware.gpus)
    # every GPU a full copy (DDP or one GPU) first; FSDP over all GPUs only when no candidate fits that way
    for shards in (1, n) if n > 1 else (1,):
        for name, why in candidates:
            found = _fastest_fit(model_shape(name), budget, max_seq_len, supervised_share, lora_r,
                                 decide_precision("auto", "cuda", bf16=smallest.bf16, sharding="fsdp" if shards > 1 else "none"),
                                 shards)
            if found is not None:
                best, model = found, name
                reasons.append(f"model {name}: {why}")
                break
        if best is not None:
            break
    if best is not None and best[0].get("sharding") == "fsdp":
        host = model_shape(model).parameters * (2 if precision == "bf16" else 4) * n / 2**30
        reasons.append(f"sharding fsdp: the model fits no single GPU, even in 4-bit; its weights are sharded over the {n} GPUs "
                       f"(launch one process per GPU: torchrun --nproc_per_node {n} -m qdtool train --preset auto ...)")
        reasons.append(f"host RAM: each process loads the whole model before sharding, about {host:.0f} GiB in all "
                       f"({hardware.ram_gib:.0f} GiB here)" + ("" if host < hardware.ram_gib else ": NOT ENOUGH, use fewer GPUs or a smaller model"))
    if best is None:
        smallest_need = estimate(model_shape(candidates[-1][0]), quantization="4bit", optimizer="paged_adamw_8bit", lora_r=lora_r,
                                 batch_tokens=min(b for b in BATCH_TOKENS if b >= max_seq_len), gradient_checkpointing=True,
                                 supervised_share=supervised_share, precision=precision).total_gib
        raise ConfigError(
            f"{candidates[-1][0]} does not fit in {smallest.free_gib:.1f} GiB free even in 4-bit with gradient checkpointing "
            f"(needs about {smallest_need:.1f} GiB){', nor sharded (FSDP) over the ' + str(len(hardware.gpus)) + ' GPUs' if len(hardware.gpus) > 1 else ''}: choose a smaller model, e.g. Qwen/Qwen2.5-0.5B-Instruct, or free the GPU"
        )
    settings, est = best
    settings["model"] = model
    reasons.append(
        f"{'4-bit NF4' if settings['quantization'] == '4bit' else 'bf16 weights'}, gradient checkpointing "
        f"{'on' if settings['gradient_checkpointing'] else 'off'}, {settings['batch_tokens']} tokens per micro-batch: the fastest "
        f"combination whose estimate ({est.total_gib:.1f} GiB{' per GPU' if len(hardware.gpus) > 1 else ''}) fits the budget"
    )
    reasons.append(f"grad_accum {settings['grad_accum']}: about {TOKENS_PER_STEP:,} tokens per optimizer step")
    return PresetChoice("auto", settings, est, budget, reasons)


def data_lengths(data: str | Path, model: str) -> tuple[int, float, str]:
    """(p99 sample tokens, supervised share, tokenizer used) of a dataset, rendered as `train` renders it.

    Uses the model's tokenizer; when it cannot be loaded (offline, gated), the embedded one, and says so.
    """
    from qdtool.core.data import read_dataset
    from qdtool.core.datastats import token_stats
    from qdtool.core.modeling import load_tokenizer

    records = read_dataset(data)
    try:
        tokenizer, used = load_tokenizer(model), model
    except ModelError:
        tokenizer, used = load_tokenizer("embedded"), "embedded (the model's tokenizer could not be loaded)"
    stats = token_stats(records, tokenizer, used)
    share = stats.mean_answer / (stats.mean_prompt + stats.mean_answer)
    return stats.p99, share, used


def resolve_preset(name: str, hardware: HardwareReport, *, model: str | None = None, data: str | Path | None = None) -> PresetChoice:
    """A named preset, or `auto` planned for this hardware, model and data."""
    if name != "auto":
        settings = load_preset(name)
        if model:
            settings["model"] = model
        return PresetChoice(name, settings, None, None, [f"the {name} preset (configs/presets/{name}.yaml)"])
    p99, share = None, 0.4
    if data is not None:
        target = model or (load_preset(tier_for(max(g.total_gib for g in hardware.gpus))) ["model"] if hardware.gpus else "embedded")
        p99, share, used = data_lengths(data, target)
        choice = choose_auto(hardware, model=model, p99_tokens=p99, supervised_share=share)
        choice.reasons.append(f"token lengths from {data} with the tokenizer of {used}; {share:.0%} of tokens carry loss")
        return choice
    return choose_auto(hardware, model=model, p99_tokens=p99, supervised_share=share)
