"""One optimizer step: grad_accum micro-batches, token-mean loss over the whole step, clip, update."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

from qdtool.config import TrainConfig
from qdtool.core import neftune
from qdtool.core.distributed import Dist
from qdtool.core.loss import answer_loss_sum
from qdtool.errors import TrainingError

LossOf = Callable[[dict[str, Any]], tuple[Any, int]]  # batch -> (summed answer-token loss, answer tokens)


def loss_function(model: Any, loss_module: Any = None) -> LossOf:
    """The loss of a batch: through FSDP's wrapped module when sharded, else `answer_loss_sum` on the model."""
    def loss_of(batch: dict[str, Any]) -> tuple[Any, int]:
        if loss_module is not None:
            loss_sum, count = loss_module(**batch)
            return loss_sum, int(count)
        return answer_loss_sum(model, batch)

    return loss_of


def train_step(model, optimizer, scheduler, scaler, autocast, micro, config: TrainConfig, hardware, step: int,
               dist: Dist, loss_of: LossOf, sharded: bool) -> dict[str, Any]:
    """Run step `step` (from 0) on this process's share of `micro`; returns its metrics row.

    Raises:
        TrainingError: the loss is NaN/inf, or the GPU ran out of memory (with what to change).
    """
    import torch

    try:
        return _optimizer_step(model, optimizer, scheduler, scaler, autocast, micro, config, hardware, step, dist, loss_of, sharded)
    except torch.cuda.OutOfMemoryError as exc:
        raise TrainingError(oom_message(step, config, "training")) from exc


def _optimizer_step(model, optimizer, scheduler, scaler, autocast, micro, config: TrainConfig, hardware, step: int,
                    dist: Dist, loss_of: LossOf, sharded: bool) -> dict[str, Any]:
    import torch

    started = time.perf_counter()
    n_supervised = sum(mb.supervised_tokens for mb in micro)  # of the whole step, over all processes
    loss_value = 0.0
    for mb, weight in dist.share(micro, lockstep=sharded):
        batch = mb.to_tensors(hardware.device)
        with autocast or nullcontext(), neftune.noisy(model, config.neftune_alpha, batch):  # training steps only
            loss_sum, _ = loss_of(batch)
        loss = loss_sum * weight / max(n_supervised, 1)  # token mean over the whole step, not per micro-batch
        # FSDP averages gradients over processes; the sum is wanted, as the loss is already a share of the step
        scaled = loss * dist.world if sharded else loss
        (scaler.scale(scaled) if scaler else scaled).backward()
        loss_value += float(loss.detach())
    params = [p for p in model.parameters() if p.requires_grad]
    if not sharded:  # FSDP has already summed them (reduce-scatter in backward)
        dist.sum_gradients(params)  # each process holds its share of the step's token-mean gradient
    loss_value = dist.sum([loss_value])[0]
    _check_finite(loss_value, step, config)
    if scaler:
        scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm if config.max_grad_norm > 0 else float("inf"))
    grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # FSDP: a replicated DTensor
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    lr = scheduler.get_last_lr()[0]
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    if hardware.device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {
        "step": step + 1,
        "loss": loss_value,
        "lr": lr,
        "grad_norm": grad_norm,
        "supervised_tokens": n_supervised,
        "tokens": sum(mb.tokens for mb in micro),
        "samples": sum(mb.n_samples for mb in micro),
        "seconds": seconds,
        "supervised_tokens_per_s": n_supervised / seconds,
    }


def _check_finite(loss_value: float, step: int, config: TrainConfig) -> None:
    if not math.isfinite(loss_value):
        raise TrainingError(
            f"the loss became {loss_value} at step {step + 1}. Likely causes: a learning rate too high "
            f"(now {config.lr:g}; try {config.lr / 4:g}), fp16 overflow (use --precision bf16 or fp32), or broken "
            "samples (run `qdtool validate-data`). Checkpoints before this step are kept."
        )


def oom_message(step: int, config: TrainConfig, phase: str) -> str:
    """What to change after running out of GPU memory in `phase` ("training" or "evaluation") of step `step`."""
    import torch

    used = torch.cuda.memory_reserved() / 2**30 if torch.cuda.is_available() else 0.0
    total = torch.cuda.get_device_properties(0).total_memory / 2**30 if torch.cuda.is_available() else 0.0
    return (
        f"out of GPU memory during {phase} at step {step + 1} ({used:.1f} of {total:.1f} GiB reserved). Try, in this order: "
        f"--batch-tokens {max(config.max_seq_len, config.batch_tokens // 2)} (now {config.batch_tokens}), "
        "--gradient-checkpointing, --quantization 4bit, "
        f"--max-seq-len {max(64, config.max_seq_len // 2)} (now {config.max_seq_len}), or a smaller model."
    )
