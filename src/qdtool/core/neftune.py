"""NEFTune (Jain et al., 2023): uniform noise on the input embeddings in training steps.

Each embedding vector of a sample of L tokens gets noise drawn uniformly from [-1, 1] per element and
scaled by alpha / sqrt(L * d) (d: the hidden size). L is the sample's own length: in a packed row
(core/batching.py) a sample is where `position_ids` restart at 0, so several samples in one row
each get their own scale; a padded row's length is its attention mask's sum; a row with neither is
one sample. The noise comes from a forward hook on the input embedding module that `noisy` holds
for one forward pass of a training step only, and that adds nothing to a module in eval mode:
evaluation and decoding never see it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def sample_lengths(batch: dict[str, Any]) -> Any:
    """[B, T] float: the length of the sample each token belongs to (see the module docstring)."""
    import torch

    ids = batch["input_ids"]
    positions = batch.get("position_ids")
    if positions is not None:  # packed: a sample starts where the position restarts at 0
        segment = (positions == 0).long().cumsum(-1)  # 1, 1, 1, 2, 2, ... within each row
        counts = torch.zeros(ids.shape[0], ids.shape[1] + 1, dtype=torch.long, device=ids.device)
        counts.scatter_add_(1, segment, torch.ones_like(segment))
        return counts.gather(1, segment).float()
    mask = batch.get("attention_mask")
    if mask is not None:
        return mask.sum(-1, keepdim=True).clamp(min=1).float().expand(ids.shape)
    return torch.full(ids.shape, float(ids.shape[1]), device=ids.device)


def add_noise(embeddings: Any, lengths: Any, alpha: float) -> Any:
    """`embeddings` [B, T, d] plus uniform noise in +-alpha / sqrt(L * d), L from `lengths` [B, T]."""
    import torch

    scale = alpha / torch.sqrt(lengths * embeddings.shape[-1])
    noise = torch.empty_like(embeddings).uniform_(-1, 1)
    return embeddings + noise * scale.unsqueeze(-1).to(embeddings.dtype)


@contextmanager
def noisy(model: Any, alpha: float, batch: dict[str, Any]) -> Iterator[None]:
    """While inside, the input embeddings of `model` get NEFTune noise for `batch` (nothing when alpha is 0,
    or when the embedding module is in eval mode); the hook is gone on leaving."""
    if alpha <= 0:
        yield
        return
    lengths = sample_lengths(batch)

    def hook(module: Any, args: tuple[Any, ...], output: Any) -> Any:
        if not module.training or output.shape[:2] != lengths.shape:
            return None  # eval mode, or another input than this batch's (left as it is)
        return add_noise(output, lengths, alpha)

    handle = model.get_input_embeddings().register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
