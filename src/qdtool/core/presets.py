"""Presets: named YAML recipes per memory tier, and `auto`, which picks the fastest settings whose
estimated peak memory fits the GPU it finds (with a safety margin).

`plan_training` decides a run's configuration: the preset's settings under the YAML file under the
command line, merged and validated once. `auto` plans around what the file and the flags set (it
keeps those values), and its memory estimate is of the merged configuration, the one that trains.
"""

from __future__ import annotations

import functools
import math
from collections import ChainMap
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from qdtool.config import TrainConfig
from qdtool.core.hardware import GpuInfo, HardwareReport, decide_precision
from qdtool.core.memory import MemoryEstimate, Shape, estimate
from qdtool.errors import ConfigError, ModelError

TIERS = ("cpu", "8gb", "12gb", "16gb", "24gb", "48gb", "80gb")
SAFETY_MARGIN = 0.08  # share of free memory left unused by `auto`
TOKENS_PER_STEP = 16384  # effective tokens per optimizer step that `auto` keeps via grad_accum
BATCH_TOKENS = (16384, 8192, 4096, 2048, 1024, 512, 256)
LORA_R = 16  # the rank `auto` sets (alpha 2r); a rank given in the YAML file or a flag wins

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
# The settings from the YAML file and the flags that `auto` plans around; it keeps each one given.
_PLAN_INPUTS = ("model", "data", "max_seq_len", "packing", "batch_tokens", "batch_size", "grad_accum", "lora_r", "lora_target",
                "lora_dropout", "quantization", "double_quant", "precision", "gradient_checkpointing", "sharding", "optimizer",
                "method", "train_embeddings", "question_field", "steps_field")
_DEFAULTS = {name: info.default for name, info in TrainConfig.model_fields.items()}


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


@functools.lru_cache(maxsize=16)
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
    settings: dict[str, Any]  # what the preset (or auto's plan) sets, under the YAML file and the flags
    estimate: MemoryEstimate | None  # auto: of the configuration that trains
    budget_gib: float | None
    reasons: list[str] = field(default_factory=list)
    supervised_share: float = 0.4  # share of tokens that carry loss, as planned for

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "settings": self.settings, "budget_gib": self.budget_gib, "reasons": self.reasons,
                "estimate": self.estimate.to_dict() if self.estimate else None}


def plan_training(preset: str | None, config_file: Path | None = None, overrides: Mapping[str, Any] | None = None,
                  *, hardware: HardwareReport | None = None) -> tuple[TrainConfig, PresetChoice | None]:
    """The configuration a run trains with, and the preset choice behind it (None without a preset).

    The preset's settings lie under the YAML file, which lies under `overrides` (the command line);
    the three are merged and validated once. `auto` is planned for `hardware` (probed when None)
    around the values the file and the flags give, and its estimate is of the merged configuration.

    Raises:
        ConfigError: an unknown preset, an unreadable file or a bad value (every one, together), or,
            with `auto`, settings that fit no GPU here.
    """
    from qdtool.config import load_train_config, read_config_file

    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    from_file = read_config_file(config_file) if config_file is not None else {}
    choice = None
    if preset is not None:
        if preset == "auto" and hardware is None:
            from qdtool.core.hardware import probe_hardware

            hardware = probe_hardware()
        choice = resolve_preset(preset, hardware, typed_inputs({**from_file, **overrides}))
    config = load_train_config(config_file, overrides, base=choice.settings if choice else None, from_file=from_file)
    if choice is not None and choice.estimate is not None and hardware is not None:
        choice.estimate = estimate_settings(model_shape(config.model), config.model_dump(), hardware, choice.supervised_share)
    return config, choice


def typed_inputs(values: Mapping[str, Any]) -> dict[str, Any]:
    """The values among `values` (a YAML file's and the flags' settings) that `auto` plans around, each
    typed as its TrainConfig field. One its field refuses is left out here: the validation of the
    merged configuration reports it, with the others."""
    from pydantic import TypeAdapter, ValidationError

    typed = {}
    for name in _PLAN_INPUTS:
        if values.get(name) is None:
            continue
        info = TrainConfig.model_fields[name]
        kind = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        try:
            typed[name] = TypeAdapter(kind).validate_python(values[name])
        except ValidationError:
            continue
    return typed


def resolve_preset(name: str, hardware: HardwareReport | None, fixed: Mapping[str, Any] | None = None) -> PresetChoice:
    """A named preset, or `auto` planned for this hardware around `fixed` (settings given, see `typed_inputs`),
    with `max_seq_len` and the share of supervised tokens from the data that `fixed` names."""
    fixed = dict(fixed or {})
    if name != "auto":
        settings = load_preset(name)
        if fixed.get("model"):
            settings["model"] = fixed["model"]
        return PresetChoice(name, settings, None, None, [f"the {name} preset (configs/presets/{name}.yaml)"])
    if hardware is None:
        raise ValueError("auto plans for a machine: pass its HardwareReport (plan_training probes it)")
    if fixed.get("data") is None:
        return choose_auto(hardware, fixed=fixed)
    tier = tier_for(max(g.total_gib for g in hardware.gpus)) if hardware.gpus else "cpu"
    target = fixed.get("model") or load_preset(tier)["model"]  # whose tokenizer measures the data
    p99, share, used = data_lengths(fixed["data"], target, fixed.get("question_field"), fixed.get("steps_field"))
    choice = choose_auto(hardware, p99_tokens=p99, supervised_share=share, fixed=fixed)
    choice.reasons.append(f"token lengths from {fixed['data']} with the tokenizer of {used}; {share:.0%} of tokens carry loss")
    return choice


def choose_auto(hardware: HardwareReport, *, model: str | None = None, p99_tokens: int | None = None,
                supervised_share: float = 0.4, fixed: Mapping[str, Any] | None = None) -> PresetChoice:
    """The fastest settings whose estimated peak fits the smallest GPU here (every GPU holds a full
    copy under DDP); with several GPUs and a model that fits none of them even in 4-bit, FSDP over
    all of them; on a machine without GPU, the cpu preset. The values in `fixed` (given in the YAML
    file or as flags, typed) are kept, and the estimate is of a run with them.

    Raises:
        ConfigError: the model does not fit even in 4-bit with checkpointing and 256-token rows.
    """
    fixed = {**(fixed or {}), **({"model": model} if model else {})}
    if not hardware.gpus:
        return _plan_cpu(hardware, fixed, p99_tokens, supervised_share)
    return _plan_gpus(hardware, fixed, p99_tokens, supervised_share)


def estimate_settings(shape: Shape, settings: Mapping[str, Any], hardware: HardwareReport, supervised_share: float) -> MemoryEstimate:
    """The estimated peak memory of training with `settings` (a value for every TrainConfig field) on
    this machine: in the precision it computes in here, per GPU under FSDP, without a CUDA context on a CPU."""
    shards = len(hardware.gpus) if settings["sharding"] == "fsdp" and hardware.gpus else 1
    tokens = settings["batch_tokens"] if settings["packing"] else settings["batch_size"] * settings["max_seq_len"]
    est = estimate(shape, quantization=settings["quantization"], double_quant=settings["double_quant"], lora_r=settings["lora_r"],
                   lora_target=settings["lora_target"], optimizer=settings["optimizer"], batch_tokens=tokens,
                   supervised_share=supervised_share, gradient_checkpointing=settings["gradient_checkpointing"],
                   precision=run_precision(hardware, settings), lora_dropout=settings["lora_dropout"] > 0, shards=shards,
                   device="cuda" if hardware.gpus else "cpu", method=settings["method"], train_embeddings=settings["train_embeddings"])
    return est


def run_precision(hardware: HardwareReport, settings: Mapping[str, Any]) -> str:
    """The precision a run with `settings` computes in on this machine (its smallest GPU decides)."""
    if not hardware.gpus:
        return decide_precision(settings["precision"], "cpu", quantization=settings["quantization"], optimizer=settings["optimizer"])
    gpu = _smallest(hardware)
    return decide_precision(settings["precision"], "cuda", bf16=gpu.bf16, name=gpu.name, sharding=settings["sharding"])


def _smallest(hardware: HardwareReport) -> GpuInfo:
    return min(hardware.gpus, key=lambda g: g.free_gib)


def _merged(fixed: Mapping[str, Any], planned: Mapping[str, Any]) -> Mapping[str, Any]:
    """What a run trains with: the values given over the plan's over the defaults."""
    return ChainMap(dict(fixed), dict(planned), _DEFAULTS)


def _plan_cpu(hardware: HardwareReport, fixed: Mapping[str, Any], p99_tokens: int | None, share: float) -> PresetChoice:
    """The cpu preset, with max_seq_len (and batch_tokens, when shorter) from the data."""
    settings = load_preset("cpu")
    settings["model"] = fixed.get("model", settings["model"])
    settings["max_seq_len"], seq_reason = _max_seq_len(p99_tokens, fixed, settings["max_seq_len"], "no data given, the cpu preset's")
    settings["batch_tokens"] = max(settings["batch_tokens"], settings["max_seq_len"])
    run = _merged(fixed, settings)
    est = estimate_settings(model_shape(settings["model"]), run, hardware, share)
    over = "" if est.total_gib <= hardware.ram_gib else ": MORE THAN THERE IS, lower batch_tokens or max_seq_len"
    return PresetChoice("cpu", settings, est, hardware.ram_gib, [
        seq_reason, *_kept(fixed),
        f"no CUDA GPU: the cpu preset ({run_precision(hardware, run)} on this CPU, no quantization)",
        f"estimated training memory {est.total_gib:.1f} GiB of {hardware.ram_gib:.1f} GiB RAM (weights, LoRA, activations, logits){over}",
    ], share)


def _plan_gpus(hardware: HardwareReport, fixed: Mapping[str, Any], p99_tokens: int | None, share: float) -> PresetChoice:
    smallest = _smallest(hardware)
    budget = smallest.free_gib * (1 - SAFETY_MARGIN)
    max_seq_len, seq_reason = _max_seq_len(p99_tokens, fixed, 512, "no data given, the default")
    reasons = [f"{len(hardware.gpus)} GPU(s); planning for GPU {smallest.index} ({smallest.name}, {smallest.free_gib:.1f} GiB free): "
               f"budget {budget:.1f} GiB after a {SAFETY_MARGIN:.0%} margin", seq_reason, *_kept(fixed)]
    models = _candidate_models(hardware, fixed)
    found = _first_fit(hardware, models, fixed, budget, max_seq_len, share)
    if found is None:
        raise _no_fit(hardware, models[-1][0], fixed, max_seq_len, share)
    (model, why), settings, est = found
    settings["model"] = model
    run = _merged(fixed, settings)
    reasons.append(f"model {model}: {why}")
    if run["sharding"] == "fsdp":
        reasons += _fsdp_reasons(hardware, model, run_precision(hardware, run))
    weights = {"4bit": "4-bit NF4", "8bit": "8-bit"}.get(run["quantization"], f"{run_precision(hardware, run)} weights")
    reasons.append(
        f"{weights}, gradient checkpointing {'on' if run['gradient_checkpointing'] else 'off'}, {run['batch_tokens']} tokens per "
        f"micro-batch: the fastest combination whose estimate ({est.total_gib:.1f} GiB{' per GPU' if len(hardware.gpus) > 1 else ''}) "
        "fits the budget"
    )
    if "grad_accum" not in fixed:
        reasons.append(f"grad_accum {run['grad_accum']}: about {TOKENS_PER_STEP:,} tokens per optimizer step")
    return PresetChoice("auto", settings, est, budget, reasons, share)


def _max_seq_len(p99_tokens: int | None, fixed: Mapping[str, Any], default: int, default_why: str) -> tuple[int, str]:
    """max_seq_len and the reason for it: as given, else the data's p99 rounded up to a multiple of 64
    (128 to 2,048), else `default`; never over a batch_tokens given (when packing)."""
    if "max_seq_len" in fixed:
        return fixed["max_seq_len"], f"max_seq_len {fixed['max_seq_len']}: as given"
    if p99_tokens:
        length = min(2048, max(128, math.ceil(p99_tokens / 64) * 64))
        why = f"the data's p99 sample is {p99_tokens} tokens, rounded up to a multiple of 64"
    else:
        length, why = default, default_why
    if fixed.get("packing", True) and fixed.get("batch_tokens", length) < length:
        length, why = fixed["batch_tokens"], why + f", cut to the batch_tokens given ({fixed['batch_tokens']})"
    return length, f"max_seq_len {length}: {why}"


def _given(fixed: Mapping[str, Any]) -> str:
    """The values given that the plan keeps (model, data and max_seq_len have reasons of their own)."""
    return ", ".join(f"{k} {v}" for k, v in fixed.items() if k not in ("model", "data", "max_seq_len", "question_field", "steps_field"))


def _kept(fixed: Mapping[str, Any]) -> list[str]:
    return [f"kept as given (--config, flags): {_given(fixed)}"] if _given(fixed) else []


def _candidate_models(hardware: HardwareReport, fixed: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(model, why) to try in order: the one given, else the tier's, then smaller tiers' if it does not fit what is free."""
    if fixed.get("model"):
        return [(fixed["model"], "given")]
    tier = tier_for(max(g.total_gib for g in hardware.gpus))
    models: dict[str, str] = {}
    for name in TIERS[1 : TIERS.index(tier) + 1][::-1]:
        models.setdefault(load_preset(name)["model"], f"the {name} tier's recommendation (Apache-2.0)")
    return list(models.items())


def _first_fit(hardware: HardwareReport, models: list[tuple[str, str]], fixed: Mapping[str, Any], budget: float, max_seq_len: int,
               share: float) -> tuple[tuple[str, str], dict[str, Any], MemoryEstimate] | None:
    """The first model that fits and its fastest settings: every GPU a full copy (DDP or one GPU) first,
    FSDP over all GPUs only when no model fits that way (16-bit weights only: qdtool does not shard 4-bit ones)."""
    for shards in _shard_counts(len(hardware.gpus), fixed):
        for model in models:
            found = _fastest_fit(model_shape(model[0]), hardware, fixed, budget, max_seq_len, share, shards)
            if found is not None:
                return (model, *found)
    return None


def _shard_counts(gpus: int, fixed: Mapping[str, Any]) -> tuple[int, ...]:
    """Over how many GPUs `auto` may shard the weights: 1 (each holds them all), then all of them."""
    if gpus == 1 or fixed.get("sharding") == "none" or fixed.get("quantization", "none") != "none" or fixed.get("method") == "full":
        return (1,)
    return (gpus,) if fixed.get("sharding") == "fsdp" else (1, gpus)


def _fastest_fit(shape: Shape, hardware: HardwareReport, fixed: Mapping[str, Any], budget: float, max_seq_len: int, share: float,
                 shards: int) -> tuple[dict[str, Any], MemoryEstimate] | None:
    """The highest-ranked settings whose estimate fits `budget` GiB, or None."""
    best: tuple[float, dict[str, Any], MemoryEstimate] | None = None
    for planned in _candidates(fixed, max_seq_len, shards):
        est = estimate_settings(shape, _merged(fixed, planned), hardware, share)
        if est.total_gib > budget:
            continue
        score = _speed(planned["quantization"], planned["gradient_checkpointing"], planned["batch_tokens"])
        if best is None or score > best[0]:
            best = (score, planned, est)
    return None if best is None else (best[1], best[2])


def _candidates(fixed: Mapping[str, Any], max_seq_len: int, shards: int) -> Iterator[dict[str, Any]]:
    """The settings `auto` chooses among; a value given for one of them is the only one tried."""
    def options(name: str, default: tuple[Any, ...]) -> tuple[Any, ...]:
        return (fixed[name],) if name in fixed else default

    batches = tuple(b for b in BATCH_TOKENS if b >= max_seq_len) or (max_seq_len,)
    for quantization in options("quantization", ("none", "4bit") if shards == 1 and fixed.get("method") != "full" else ("none",)):
        for checkpointing in options("gradient_checkpointing", (False, True)):
            for batch_tokens in options("batch_tokens", batches):
                # FSDP: the plain (foreach) AdamW, the one the sharded tests run
                optimizer = ("adamw" if shards > 1 else "adamw_fused") if quantization == "none" else "paged_adamw_8bit"
                planned = {"quantization": quantization, "gradient_checkpointing": checkpointing, "batch_tokens": batch_tokens,
                           "max_seq_len": max_seq_len, "optimizer": optimizer, "grad_accum": max(1, TOKENS_PER_STEP // batch_tokens),
                           "packing": True, "lora_r": LORA_R, "lora_alpha": 2 * LORA_R}
                yield {**planned, "sharding": "fsdp"} if shards > 1 else planned


def _speed(quantization: str, checkpointing: bool, batch_tokens: int) -> float:
    """Relative throughput used to rank settings that fit: GPUs saturate around 4k tokens per
    micro-batch; checkpointing recomputes the forward (~0.75x); 4-bit dequantizes every matmul (~0.6x)."""
    return min(batch_tokens, 4096) / 4096 * (0.75 if checkpointing else 1.0) * (0.6 if quantization == "4bit" else 1.0) \
        + batch_tokens * 1e-9  # ties: prefer the larger batch


def _fsdp_reasons(hardware: HardwareReport, model: str, precision: str) -> list[str]:
    n = len(hardware.gpus)
    host = model_shape(model).parameters * (2 if precision == "bf16" else 4) * n / 2**30
    return [f"sharding fsdp: the model fits no single GPU, even in 4-bit; its weights are sharded over the {n} GPUs "
            f"(launch one process per GPU: torchrun --nproc_per_node {n} -m qdtool train --preset auto ...)",
            f"host RAM: each process loads the whole model before sharding, about {host:.0f} GiB in all "
            f"({hardware.ram_gib:.0f} GiB here)" + ("" if host < hardware.ram_gib else ": NOT ENOUGH, use fewer GPUs or a smaller model")]


def _no_fit(hardware: HardwareReport, model: str, fixed: Mapping[str, Any], max_seq_len: int, share: float) -> ConfigError:
    """Why nothing fits: the least memory `model` needs here, with the values given."""
    shape = model_shape(model)
    runs = [_merged(fixed, planned) for planned in _candidates(fixed, max_seq_len, 1)]
    need, run = min(((estimate_settings(shape, run, hardware, share).total_gib, run) for run in runs), key=lambda pair: pair[0])
    how = {"4bit": "in 4-bit", "8bit": "in 8-bit"}.get(run["quantization"], "unquantized")
    how += " with gradient checkpointing" if run["gradient_checkpointing"] else " without gradient checkpointing"
    n, free = len(hardware.gpus), _smallest(hardware).free_gib
    sharded = f", nor sharded (FSDP) over the {n} GPUs" if n > 1 and n in _shard_counts(n, fixed) else ""
    given = f", with the values given ({_given(fixed)})" if _given(fixed) else ""
    return ConfigError(f"{model} does not fit in {free:.1f} GiB free ({free * (1 - SAFETY_MARGIN):.1f} GiB after the {SAFETY_MARGIN:.0%} "
                       f"margin) even {how} (needs about {need:.1f} GiB){sharded}{given}: "
                       "choose a smaller model, e.g. Qwen/Qwen2.5-0.5B-Instruct, or free the GPU")


def data_lengths(data: str | Path, model: str, question_field: str | None = None, steps_field: str | None = None) -> tuple[int, float, str]:
    """(p99 sample tokens, supervised share, tokenizer used) of a dataset, rendered as `train` renders it.

    Uses the model's tokenizer; when it cannot be loaded (offline, gated), the embedded one, and says so.
    """
    from qdtool.core.data import Fields, read_dataset
    from qdtool.core.datastats import token_stats
    from qdtool.core.modeling import load_tokenizer

    records = read_dataset(data, fields=Fields.of(question_field, steps_field))
    try:
        tokenizer, used = load_tokenizer(model), model
    except ModelError:
        tokenizer, used = load_tokenizer("embedded"), "embedded (the model's tokenizer could not be loaded)"
    stats = token_stats(records, tokenizer, used)
    share = stats.mean_answer / (stats.mean_prompt + stats.mean_answer)
    return stats.p99, share, used
