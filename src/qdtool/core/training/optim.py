"""The optimizer and the learning-rate schedule of a run."""

from __future__ import annotations

from typing import Any

from qdtool.config import TrainConfig


def build_optimizer(model: Any, config: TrainConfig, hardware: Any) -> Any:
    """AdamW over the trainable parameters (fused on CUDA if asked), or a bitsandbytes variant."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    kwargs = {"lr": config.lr, "weight_decay": config.weight_decay}
    if config.optimizer in ("adamw", "adamw_fused"):
        fused = config.optimizer == "adamw_fused" and hardware.device == "cuda"
        return torch.optim.AdamW(params, fused=fused or None, **kwargs)
    import bitsandbytes as bnb

    cls = {"adamw_8bit": bnb.optim.AdamW8bit, "paged_adamw_8bit": bnb.optim.PagedAdamW8bit, "paged_adamw_32bit": bnb.optim.PagedAdamW32bit}
    return cls[config.optimizer](params, **kwargs)


def build_scheduler(optimizer: Any, config: TrainConfig, total_steps: int) -> Any:
    """Linear warm-up, then cosine or linear decay to 0 at `total_steps`, or constant.

    Warm-up step k (from 0) uses (k + 1) / (warmup + 1) of the peak rate, so no step runs at lr 0
    (transformers' schedules start at 0, which wasted the first step of short runs).
    """
    import math

    from torch.optim.lr_scheduler import LambdaLR

    warmup = round(config.warmup_ratio * total_steps)
    decay = max(1, total_steps - warmup)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / decay)
        if config.scheduler == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if config.scheduler == "linear":
            return 1.0 - progress
        return 1.0

    return LambdaLR(optimizer, factor)
