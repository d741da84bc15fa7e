"""Which weights of the base train: LoRA adapters on a frozen base (`method: lora`), or the base's own
weights (`method: full`)."""

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


def make_trainable(model: Any, config: TrainConfig) -> Any:
    """The model to train: `add_lora(model)`, or for method full `model` itself with its weights trainable."""
    return full_finetune(model, config) if config.method == "full" else add_lora(model, config)


def full_finetune(model: Any, config: TrainConfig) -> Any:
    """`model` with every weight trainable, but for the input embedding unless `train_embeddings`.

    A tied LM head is the embedding's own tensor, so it is frozen with it: its fp32 gradient and
    two AdamW states (12 bytes a weight, 2.0 GB for Gemma's 262k x 640) are what freezing saves. The
    loss then takes the head as frozen (core/loss.py) and keeps no [tokens, vocab] tensor for it.
    """
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    embedding = model.get_input_embeddings()
    if not config.train_embeddings and embedding is not None:
        embedding.weight.requires_grad_(False)
    if config.gradient_checkpointing and not config.train_embeddings:
        model.enable_input_require_grads()  # as for LoRA: reentrant checkpointing needs an input that requires grad
    return model
