"""core/loss.py: the chunked LM head + cross-entropy equals the full-logit loss, values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from qdtool.core.loss import answer_loss_sum, chunk_rows, head_losses, token_losses
from qdtool.core.prompts import IGNORE_INDEX

from conftest import build_tiny_model

VOCAB = 300


def _batch(seed: int = 0, rows: int = 2, length: int = 24) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (rows, length), generator=g)
    labels = ids.clone()
    labels[:, : length // 3] = IGNORE_INDEX  # a prompt
    labels[0, -3:] = IGNORE_INDEX  # padding-like tail
    return {"input_ids": ids, "labels": labels}


def _reference(model, batch, cap: float | None) -> torch.Tensor:
    """The plain computation: full logits for every supervised position at once."""
    out = model.get_decoder()(input_ids=batch["input_ids"], use_cache=False).last_hidden_state
    targets = batch["labels"][:, 1:]
    mask = targets != IGNORE_INDEX
    logits = model.get_output_embeddings()(out[:, :-1][mask]).float()
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return F.cross_entropy(logits, targets[mask], reduction="none")


def _model(tied: bool, lora: bool, cap: float | None, seed: int = 3):
    model = build_tiny_model(VOCAB, seed=seed, tied=tied).float()
    model.config.final_logit_softcapping = cap
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0))
        for name, p in model.named_parameters():  # non-zero B, so LoRA gradients flow through every layer
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.05)
    model.train()
    return model


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


def _losses_and_grads(model, fn, weights: torch.Tensor | None = None):
    model.zero_grad(set_to_none=True)
    losses = fn()
    (losses * weights if weights is not None else losses).sum().backward()
    return losses.detach(), _grads(model)


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("cap", [None, 5.0])
@pytest.mark.parametrize("rows", [1, 7, 10_000])
@pytest.mark.parametrize("lora", [True, False], ids=["lora-frozen-head", "full-trainable-head"])
def test_chunked_equals_full_logits_in_values_and_gradients(tied, cap, rows, lora):
    model, batch = _model(tied, lora, cap), _batch()
    import qdtool.core.loss as loss_module

    n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    weights = torch.linspace(0.5, 2.0, n)  # per-token weights: each row's gradient must scale on its own
    ref_losses, ref_grads = _losses_and_grads(model, lambda: _reference(model, batch, cap), weights)

    def chunked():
        hidden, head = loss_module._hidden_and_head(model, batch)
        targets = batch["labels"][:, 1:]
        mask = targets != IGNORE_INDEX
        return head_losses(model, head, hidden[:, :-1][mask], targets[mask], rows=rows)

    losses, grads = _losses_and_grads(model, chunked, weights)
    torch.testing.assert_close(losses, ref_losses, rtol=1e-5, atol=1e-6)
    assert grads.keys() == ref_grads.keys() and len(grads) > 0
    if not lora:
        assert any("lm_head" in k or "embed_tokens" in k for k in grads)  # the head's own gradient is checked too
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_chunked_equals_full_logits_under_bf16_autocast():
    model, batch = _model(tied=True, lora=True, cap=30.0), _batch(seed=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref_losses, ref_grads = _losses_and_grads(model, lambda: _reference(model, batch, 30.0))
        losses, grads = _losses_and_grads(model, lambda: token_losses(model, batch)[0])
    torch.testing.assert_close(losses, ref_losses, rtol=2e-2, atol=2e-2)
    for name in grads:  # the same bf16 matmuls, so only summation order differs
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=5e-2, atol=5e-3, msg=name)


def test_no_grad_path_and_the_step_sum_match_the_reference():
    model, batch = _model(tied=False, lora=True, cap=None), _batch(seed=7)
    with torch.no_grad():
        ref = _reference(model, batch, None)
        losses, mask = token_losses(model, batch)
        total, count = answer_loss_sum(model, batch)
    torch.testing.assert_close(losses, ref, rtol=1e-5, atol=1e-6)
    assert count == int(mask.sum()) == ref.numel()
    torch.testing.assert_close(total, ref.sum(), rtol=1e-5, atol=1e-5)


def test_an_empty_micro_batch_gives_a_zero_loss_with_a_graph():
    model, batch = _model(tied=False, lora=True, cap=None), _batch()
    batch["labels"][:] = IGNORE_INDEX
    total, count = answer_loss_sum(model, batch)
    assert count == 0 and float(total.detach()) == 0.0
    total.backward()  # an empty micro-batch must not break the step


class _LargestTensor(TorchDispatchMode):
    """Records the most elements any single op returned."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_no_tensor_of_all_answer_tokens_times_vocab_is_ever_made():
    model, batch = _model(tied=True, lora=True, cap=5.0), _batch(rows=4, length=40)
    n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    import qdtool.core.loss as loss_module

    with torch.no_grad():
        hidden, head = loss_module._hidden_and_head(model, batch)
    targets = batch["labels"][:, 1:]
    mask = targets != IGNORE_INDEX
    answer = hidden[:, :-1][mask].detach().requires_grad_(True)  # backward stops here: only the head and the loss
    with _LargestTensor() as seen:
        head_losses(model, head, answer, targets[mask], rows=8).sum().backward()
    assert n > 8 * 4
    assert seen.largest <= max(8 * VOCAB, head.weight.numel())  # one chunk's logits, or the head weight itself
    with _LargestTensor() as full:
        logits = torch.tanh(head(answer).float() / 5.0) * 5.0
        F.cross_entropy(logits, targets[mask]).backward()
    assert full.largest >= n * VOCAB  # the measure sees the full-logit tensor where there is one


def test_chunk_rows_bounds_one_fp32_chunk_near_32_mib():
    assert chunk_rows(262_144) == 32
    assert chunk_rows(32_000) == 262
    assert chunk_rows(10**9) == 1
