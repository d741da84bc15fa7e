"""LoRA: wrap a base model with the trainable low-rank adapters a TrainConfig describes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qdtool.errors import ConfigError

if TYPE_CHECKING:
    from qdtool.config import TrainConfig


def add_lora(model: Any, config: TrainConfig) -> Any:
    """`model` as a peft model whose only trainable weights are the LoRA adapters.

    Raises:
        ConfigError: `lora_target` names no module of this model.
    """
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
    if config.gradient_checkpointing:  # checkpointed blocks need an input that requires grad, or LoRA gets none
        peft_model.enable_input_require_grads()
    return peft_model
