"""FSDP (`sharding: fsdp`): the base model's weights sharded across the processes of a torchrun /
accelerate launch, for models that do not fit one GPU.

The answer-only loss (core/loss.py) calls the decoder and the LM head itself instead of the model's
forward, so sharding the model alone would leave the embedding, final norm and head gathered by
no one. `AnswerLoss` makes that loss the forward of a module, and that module is the FSDP root:
every decoder layer is its own FSDP unit, the root unit holds the rest (embeddings, norm, the head,
which Gemma ties to the embeddings). FSDP2 (`torch.distributed.fsdp.fully_shard`) is used because it
keeps frozen and trainable parameters in one unit without flattening them together.

FSDP runs collectives inside every forward and backward, so all processes must run the same number
of them: a process with no micro-batch left in a step runs one with weight 0 (`Dist.share`).
"""

from __future__ import annotations

from typing import Any

import torch

from qdtool.errors import ConfigError


class AnswerLoss(torch.nn.Module):
    """The training objective as a module: forward(batch) -> (sum of answer-token losses, their count)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Any, labels: Any, position_ids: Any = None, attention_mask: Any = None):
        from qdtool.core.loss import token_losses

        batch = {"input_ids": input_ids, "labels": labels}
        if position_ids is not None:
            batch["position_ids"] = position_ids
        if attention_mask is not None:
            batch["attention_mask"] = attention_mask
        losses, mask = token_losses(self.model, batch)
        return losses.sum(), mask.sum()


def _layer_classes(model: Any) -> set[str]:
    """Class names of the decoder layers, as the model declares them (`_no_split_modules`)."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    return names


def shard(model: Any, device: str) -> Any:
    """Shard `model` (a PEFT model, LoRA already added) with FSDP2; returns the root AnswerLoss module.

    FSDP averages gradients over processes. The training loop divides each process's loss by the
    step's answer tokens over all processes (as under DDP), so it wants their sum: it multiplies the
    loss by the number of processes before backward (the PreMulSum reduction FSDP offers for this
    does not exist on gloo).
    """
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
    except ImportError as exc:  # pragma: no cover - torch < 2.6
        raise ConfigError("sharding fsdp needs torch >= 2.6 (torch.distributed.fsdp.fully_shard)") from exc
    import torch.distributed as dist

    mesh = init_device_mesh(device, (dist.get_world_size(),))
    classes = _layer_classes(model)
    layers = [m for m in model.modules() if type(m).__name__ in classes]
    if not layers:
        raise ConfigError(f"sharding fsdp: found no decoder layers to shard in {type(model).__name__} "
                          "(the model declares none in _no_split_modules); use sharding none")
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    root = AnswerLoss(model)
    fully_shard(root, mesh=mesh)
    return root


def _full(value: Any) -> Any:
    return value.full_tensor() if hasattr(value, "full_tensor") else value


def full_lora_weights(model: Any) -> dict[str, Any]:
    """The LoRA weights as whole CPU tensors, named as in model.state_dict() (what PeftModel.save_pretrained
    takes as state_dict). Every process must call it: gathering a shard is a collective."""
    return {name: _full(value).detach().cpu().contiguous() for name, value in model.state_dict().items() if "lora_" in name}


def full_adapter_state(model: Any) -> dict[str, Any]:
    """The LoRA weights as whole tensors, named as PEFT saves them (as in a checkpoint). Every process must call it."""
    from peft import get_peft_model_state_dict

    return {name: value.contiguous() for name, value in get_peft_model_state_dict(model, state_dict=full_lora_weights(model)).items()}


def full_optimizer_state(model: Any, optimizer: Any) -> dict[str, Any]:
    """The optimizer state unsharded, keyed by parameter name. Every process must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_optimizer_state(model: Any, optimizer: Any, state: dict[str, Any]) -> None:
    """Put a state saved by `full_optimizer_state` back into the sharded optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=StateDictOptions(full_state_dict=True))


__all__ = ["AnswerLoss", "full_adapter_state", "full_lora_weights", "full_optimizer_state", "load_full_optimizer_state", "shard"]
