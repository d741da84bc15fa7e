"""core/training/optim.py: the learning-rate schedule."""

from __future__ import annotations

import pytest
import torch

from qdtool.config import TrainConfig


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant"])
def test_lr_schedule_warms_up_from_above_zero_and_decays_as_named(kind):
    """Against a direct computation: warm-up step k at (k + 1) / (w + 1) of the peak, then the decay."""
    import math

    from qdtool.core.training.optim import build_scheduler

    config = TrainConfig(lr=1e-3, warmup_ratio=0.1, scheduler=kind)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=config.lr)
    scheduler = build_scheduler(optimizer, config, 30)  # 3 warm-up steps, 27 of decay
    seen = []
    for _ in range(30):
        seen.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    decay = {"cosine": lambda p: 0.5 * (1 + math.cos(math.pi * p)), "linear": lambda p: 1 - p, "constant": lambda p: 1.0}[kind]
    want = [1e-3 * (k + 1) / 4 for k in range(3)] + [1e-3 * decay((k - 3) / 27) for k in range(3, 30)]
    assert seen == pytest.approx(want)
    assert min(seen) > 0  # no step is wasted at lr 0
