"""Several processes (torchrun / accelerate launch): who this process is, and the few collectives
the training loop needs. Without WORLD_SIZE > 1 in the environment everything is a no-op."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def sum(self, values: list[float], device: Any = "cpu") -> list[float]:
        """Element-wise sum over all processes."""
        if not self.enabled:
            return values
        import torch
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def share(self, items: Sequence[Any], lockstep: bool = False) -> list[tuple[Any, float]]:
        """This process's share of `items` (every world-th, from its rank), each with weight 1.

        `lockstep` (FSDP) pads it with weight-0 repeats of the first item to as many passes as the
        process with the most: FSDP gathers weights from all processes in every forward and
        backward, so a process that ran out of micro-batches (the last step of an epoch, the last
        eval batches) must still take part.
        """
        own = [(item, 1.0) for item in items[self.rank :: self.world]]
        if lockstep and items:
            own += [(items[0], 0.0)] * (math.ceil(len(items) / self.world) - len(own))
        return own

    def gather(self, value: Any) -> list[Any]:
        """Every process's `value` (any picklable object), in rank order, on every process."""
        if not self.enabled:
            return [value]
        import torch.distributed as dist

        values: list[Any] = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def sum_gradients(self, params: list[Any]) -> None:
        """All-reduce (sum) the gradients of the trainable parameters (LoRA: a few MB)."""
        if not self.enabled:
            return
        import torch
        import torch.distributed as dist

        for p in params:
            if p.grad is None:  # this rank had no micro-batch in the step
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)


def init_from_env(cuda: bool) -> Dist:
    """Join the process group torchrun / accelerate described in the environment, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        # The loop's small sums (losses, eval totals, stop flags) are CPU tensors; with NCCL alone
        # they would have no backend. CUDA tensors (gradients, FSDP shards) go through NCCL.
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank)
