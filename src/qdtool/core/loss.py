"""The training objective: cross-entropy on the answer tokens only, through a chunked LM head.

The LM head runs only at positions whose next token carries a label: prompt tokens need no logits,
and with a large vocabulary (Gemma: 262k) the head is most of the model's compute. Even there, a
full `[answer tokens, vocab]` fp32 tensor (and the copies softcapping, log-softmax and backward make
of it) was most of a CPU run's memory: ~800 answer tokens x 262k x 4 bytes is 0.8 GB a copy. So the
head and the loss run `chunk_rows` rows at a time, and no `[tokens, vocab]` tensor is ever alive:

- frozen head (LoRA, QLoRA): each chunk's gradient with respect to its hidden states is computed in
  the forward pass, while its logits exist, and kept (`[tokens, hidden]`, small); backward only
  scales it. No recomputation, the same matmuls as the unchunked loss.
- trainable head (full fine-tuning): each chunk is checkpointed and recomputed in backward.

A step's loss is the sum over its supervised tokens divided by their count over the whole step (all
micro-batches), so gradient accumulation gives the same gradient as one big batch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from qdtool.core.prompts import IGNORE_INDEX

# One fp32 [rows, vocab] tensor of a chunk stays near this size (32 rows for Gemma's 262k vocab).
CHUNK_BYTES = 32 * 2**20


def chunk_rows(vocab: int) -> int:
    """Rows of hidden states the head turns into logits at a time."""
    return max(1, CHUNK_BYTES // (4 * vocab))


def _hidden_and_head(model: Any, batch: dict[str, Any]):
    decoder = model.get_decoder()
    out = decoder(
        input_ids=batch["input_ids"],
        position_ids=batch.get("position_ids"),
        attention_mask=batch.get("attention_mask"),
        use_cache=False,  # with a cache, packed samples would attend to each other
    )
    return out.last_hidden_state, model.get_output_embeddings()


def _postprocess(config: Any) -> Callable[[Any], Any]:
    """The post-processing some architectures apply to the head's output in their own forward."""
    import torch

    scale = getattr(config, "logit_scale", None)  # Cohere
    scaling = getattr(config, "logits_scaling", None)  # Granite
    cap = getattr(config, "final_logit_softcapping", None)  # Gemma 2/3

    def post(logits: Any) -> Any:
        logits = logits.float()
        if scale:
            logits = logits * scale
        if scaling:
            logits = logits / scaling
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    return post


def _frozen_head(head: Any) -> Callable[[Any], Any]:
    """The head as a function of hidden states, a Linear's weight cast once for the whole batch.

    Under autocast, a frozen weight is cast to the autocast dtype at every use: once per chunk
    would copy Gemma's 262k x 640 embedding 25 times a step.
    """
    import torch
    import torch.nn.functional as F

    if not isinstance(head, torch.nn.Linear):
        return head
    weight, bias = head.weight, head.bias
    device = weight.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
    weight = weight.to(dtype)
    bias = bias.to(dtype) if bias is not None else None

    def apply(hidden: Any) -> Any:
        with torch.autocast(device, enabled=False):
            return F.linear(hidden.to(dtype), weight, bias)

    return apply


@functools.cache
def _frozen_head_loss() -> Any:
    """Per-token losses whose gradient with respect to the hidden states is made during forward."""
    import torch
    import torch.nn.functional as F

    class FrozenHeadLoss(torch.autograd.Function):
        @staticmethod
        def forward(ctx, hidden, targets, head, post, rows):
            losses = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
            grad = torch.empty_like(hidden)
            for start in range(0, hidden.shape[0], rows):
                piece = hidden[start:start + rows].detach().requires_grad_(True)
                with torch.enable_grad():
                    loss = F.cross_entropy(post(head(piece)), targets[start:start + rows], reduction="none")
                    (grad[start:start + rows],) = torch.autograd.grad(loss.sum(), piece)
                losses[start:start + rows] = loss.detach()
            ctx.save_for_backward(grad)
            return losses

        @staticmethod
        def backward(ctx, grad_losses):
            (grad,) = ctx.saved_tensors
            # token k's loss depends on hidden row k alone: its gradient scales that row only
            return grad * grad_losses[:, None].to(grad.dtype), None, None, None, None

    return FrozenHeadLoss


def head_losses(model: Any, head: Any, hidden: Any, targets: Any, rows: int | None = None):
    """Cross-entropy of `targets` [K] under the head's logits for `hidden` [K, H], `rows` at a time.

    Equal (values and gradients) to the loss of the full `[K, vocab]` logits; see tests/core/test_loss.py.
    """
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    config = getattr(model, "config", None)
    rows = rows or chunk_rows(getattr(getattr(config, "text_config", None) or config, "vocab_size", None) or 32_000)
    post = _postprocess(config)
    trainable = any(p.requires_grad for p in head.parameters())
    starts = range(0, hidden.shape[0], rows)
    if hidden.shape[0] == 0:
        return hidden.new_zeros(0, dtype=torch.float32) * hidden.sum()  # keeps the graph, for an empty micro-batch
    if not torch.is_grad_enabled() or not (hidden.requires_grad or trainable):
        with torch.no_grad():
            apply = _frozen_head(head)
            return torch.cat([F.cross_entropy(post(apply(hidden[s:s + rows])), targets[s:s + rows], reduction="none")
                              for s in starts])
    if not trainable:
        return _frozen_head_loss().apply(hidden, targets, _frozen_head(head), post, rows)

    def piece_loss(piece: Any, target: Any) -> Any:
        return F.cross_entropy(post(head(piece)), target, reduction="none")

    return torch.cat([checkpoint(piece_loss, hidden[s:s + rows], targets[s:s + rows], use_reentrant=False) for s in starts])


def token_losses(model: Any, batch: dict[str, Any]):
    """Per-token losses at supervised positions: (losses [K], mask [B, T-1] of those positions)."""
    hidden, head = _hidden_and_head(model, batch)
    targets = batch["labels"][:, 1:]
    mask = targets != IGNORE_INDEX
    return head_losses(model, head, hidden[:, :-1][mask], targets[mask]), mask


def answer_loss_sum(model: Any, batch: dict[str, Any]):
    """(sum of the answer tokens' losses, their count) for one micro-batch."""
    losses, mask = token_losses(model, batch)
    return losses.sum(), int(mask.sum())


def per_sample_losses(model: Any, batch: dict[str, Any]) -> list[float]:
    """Mean answer loss of each sample in a micro-batch (packed rows or padded rows)."""
    import torch

    losses, mask = token_losses(model, batch)
    if "position_ids" in batch:  # packed: a sample starts where the position restarts at 0
        segment = (batch["position_ids"] == 0).long().cumsum(-1)[:, 1:]
        segment = segment + torch.arange(segment.shape[0], device=segment.device)[:, None] * (segment.max() + 1)
    else:  # padded: one sample per row
        segment = torch.arange(mask.shape[0], device=mask.device)[:, None].expand_as(mask)
    ids = segment[mask]
    result = []
    for value in torch.unique(ids, sorted=True):
        result.append(float(losses[ids == value].mean()))
    return result
