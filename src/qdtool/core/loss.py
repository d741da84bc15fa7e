"""The training objective: cross-entropy on the answer tokens only.

The LM head runs only at positions whose next token carries a label. Prompt tokens need no
logits, and with a large vocabulary (Gemma: 262k) the head is most of the model's compute, so this
is both the correct objective and the cheap one. A step's loss is the sum over its supervised
tokens divided by their count over the whole step (all micro-batches), so gradient accumulation
gives the same gradient as one big batch.
"""

from __future__ import annotations

from typing import Any

from qdtool.core.prompts import IGNORE_INDEX


def _hidden_and_head(model: Any, batch: dict[str, Any]):
    decoder = model.get_decoder()
    out = decoder(
        input_ids=batch["input_ids"],
        position_ids=batch.get("position_ids"),
        attention_mask=batch.get("attention_mask"),
        use_cache=False,  # with a cache, packed samples would attend to each other
    )
    return out.last_hidden_state, model.get_output_embeddings()


def _logits(model: Any, head: Any, hidden: Any):
    """The head's logits with the post-processing some architectures apply in their own forward."""
    import torch

    config = getattr(model, "config", None)
    logits = head(hidden).float()
    scale = getattr(config, "logit_scale", None)  # Cohere
    if scale:
        logits = logits * scale
    scaling = getattr(config, "logits_scaling", None)  # Granite
    if scaling:
        logits = logits / scaling
    cap = getattr(config, "final_logit_softcapping", None)  # Gemma 2/3
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def token_losses(model: Any, batch: dict[str, Any]):
    """Per-token losses at supervised positions: (losses [K], mask [B, T-1] of those positions)."""
    import torch.nn.functional as F

    hidden, head = _hidden_and_head(model, batch)
    targets = batch["labels"][:, 1:]
    mask = targets != IGNORE_INDEX
    logits = _logits(model, head, hidden[:, :-1][mask])
    return F.cross_entropy(logits, targets[mask], reduction="none"), mask


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
