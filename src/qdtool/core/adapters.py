"""Building what trains: device and precision, the (quantized) base model with LoRA, the optimizer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qdtool.config import TrainConfig
from qdtool.errors import ConfigError


@dataclass(frozen=True)
class Hardware:
    device: str  # "cuda" or "cpu"
    precision: str  # "bf16", "fp16" or "fp32"
    name: str
    index: int = 0  # the CUDA device this process uses (its LOCAL_RANK under torchrun)

    @property
    def dtype(self) -> Any:
        import torch

        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[self.precision]


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 matmuls natively (AVX512-BF16 or AMX)."""
    import torch

    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(probe() for probe in probes if probe is not None)


def detect_hardware(config: TrainConfig) -> Hardware:
    """The device and a precision it supports; asking for what it lacks is a ConfigError."""
    import torch

    if torch.cuda.is_available():
        device, name = "cuda", torch.cuda.get_device_name(0)
        bf16 = torch.cuda.is_bf16_supported()
    else:
        device, name, bf16 = "cpu", "CPU", True
    precision = config.precision
    if precision == "auto":
        if device == "cuda":  # FSDP has no sharded gradient scaler: fp32 where bf16 is missing
            precision = "bf16" if bf16 else ("fp32" if config.sharding == "fsdp" else "fp16")
        else:  # bf16 matmuls run ~4x faster than fp32 where the CPU has them (AVX512-BF16 / AMX)
            precision = "bf16" if cpu_has_fast_bf16() else "fp32"
    if device == "cpu":
        if config.quantization != "none":
            raise ConfigError(
                f"quantization {config.quantization} needs a CUDA GPU (bitsandbytes); this machine has none. "
                "Use --quantization none (configs/cpu.yaml), or run on a GPU."
            )
        if config.optimizer in ("adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit"):
            raise ConfigError(f"optimizer {config.optimizer} needs a CUDA GPU (bitsandbytes); on CPU use --optimizer adamw")
        if precision == "fp16":
            raise ConfigError("fp16 training on CPU is not supported; use --precision fp32 or bf16")
    elif precision == "bf16" and not bf16:
        raise ConfigError(f"{name} does not support bf16; use --precision fp16 (or auto)")
    return Hardware(device, precision, name)


def load_base_model(config: TrainConfig, hardware: Hardware, progress=None, *, on_cpu: bool = False) -> Any:
    """The base model, ready for LoRA; `on_cpu` keeps it off the GPU (FSDP moves each process's shard there)."""
    from qdtool.core.modeling import load_model

    quantization = None
    if config.quantization != "none":
        try:
            import bitsandbytes  # noqa: F401
            from transformers import BitsAndBytesConfig
        except ImportError as exc:
            raise ConfigError("4-bit/8-bit training needs bitsandbytes: pip install bitsandbytes") from exc
        if config.quantization == "4bit":
            quantization = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=config.double_quant,
                bnb_4bit_compute_dtype=hardware.dtype,
            )
        else:
            quantization = BitsAndBytesConfig(load_in_8bit=True)
    model = load_model(
        config.model,
        dtype=hardware.dtype,
        device_map={"": hardware.index} if hardware.device == "cuda" and not on_cpu else None,
        quantization_config=quantization,
        trust_remote_code=config.trust_remote_code,
        progress=progress,
    )
    model.config.use_cache = False
    if quantization is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=config.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def add_lora(model: Any, config: TrainConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.lora_target,
        use_rslora=config.use_rslora,
        use_dora=config.use_dora,
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        peft_model = get_peft_model(model, lora)
    except ValueError as exc:
        raise ConfigError(f"lora_target {config.lora_target!r} does not match this model's modules: {exc}") from exc
    if config.gradient_checkpointing:
        peft_model.enable_input_require_grads()
    return peft_model

