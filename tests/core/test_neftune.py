"""core/neftune.py: noise on the input embeddings of training steps only, scaled by each sample's own length."""

from __future__ import annotations

import math

import pytest
import torch

from qdtool.core.loss import answer_loss_sum
from qdtool.core.neftune import noisy, sample_lengths

from conftest import build_tiny_model

_HIDDEN = 64  # the tiny model's


@pytest.fixture
def model(tiny_tokenizer):
    return build_tiny_model(len(tiny_tokenizer)).train()


def _packed() -> dict[str, torch.Tensor]:
    """One packed row of samples of 5, 3 and 8 tokens (positions restart at 0), as core/batching.py packs them."""
    positions = torch.tensor([list(range(5)) + list(range(3)) + list(range(8))])
    ids = torch.randint(3, 500, positions.shape, generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "labels": ids.clone(), "position_ids": positions}


def _noise(model, batch: dict[str, torch.Tensor], alpha: float) -> torch.Tensor:
    """What `noisy` adds to the embeddings of `batch`."""
    embedding = model.get_input_embeddings()
    with torch.no_grad():
        clean = embedding(batch["input_ids"])
        with noisy(model, alpha, batch):
            noised = embedding(batch["input_ids"])
    return noised - clean


def test_lengths_are_each_packed_samples_own_or_the_unpadded_rows():
    assert sample_lengths(_packed()).tolist() == [[5.0] * 5 + [3.0] * 3 + [8.0] * 8]
    padded = {"input_ids": torch.ones(2, 6, dtype=torch.long), "attention_mask": torch.tensor([[1] * 6, [1] * 4 + [0] * 2])}
    assert sample_lengths(padded).tolist() == [[6.0] * 6, [4.0] * 6]
    assert sample_lengths({"input_ids": torch.ones(1, 7, dtype=torch.long)}).tolist() == [[7.0] * 7]


def test_alpha_zero_leaves_the_embeddings_as_they_are(model):
    assert torch.equal(_noise(model, _packed(), 0.0), torch.zeros(1, 16, _HIDDEN))


def test_the_noise_of_each_packed_sample_is_bounded_by_alpha_over_sqrt_its_length_times_hidden(model):
    """Uniform in +-alpha / sqrt(L d), L the sample's own length: each sample's largest |noise| nears its own bound
    (1,000 x 64 draws per sample), which the row's length (16) would undershoot for the two shorter ones."""
    alpha = 5.0
    batch = _packed()
    batch = {k: v.repeat(1000, 1) for k, v in batch.items()}
    torch.manual_seed(0)
    noise = _noise(model, batch, alpha)
    for start, length in ((0, 5), (5, 3), (8, 8)):
        bound = alpha / math.sqrt(length * _HIDDEN)
        biggest = noise[:, start:start + length].abs().max().item()
        assert 0.99 * bound < biggest <= bound * (1 + 1e-6), (length, biggest, bound)
        # uniform: the mean |noise| is half the bound
        assert noise[:, start:start + length].abs().mean().item() == pytest.approx(bound / 2, rel=0.02)


def test_no_noise_in_eval_mode_and_none_after_the_training_step(model):
    batch = _packed()
    model.eval()
    assert torch.equal(_noise(model, batch, 5.0), torch.zeros(1, 16, _HIDDEN))
    model.train()
    assert _noise(model, batch, 5.0).abs().max() > 0
    with torch.no_grad():  # the hook is gone once the step's forward is done
        after = model.get_input_embeddings()(batch["input_ids"])
        torch.testing.assert_close(after, model.get_input_embeddings().weight[batch["input_ids"]], rtol=0, atol=0)
    assert not model.get_input_embeddings()._forward_hooks


def test_the_loss_moves_with_noise_in_training_and_not_in_eval(model):
    batch = _packed()
    batch["labels"][0, :4] = -100
    with torch.no_grad():
        clean, _ = answer_loss_sum(model, batch)
        with noisy(model, 5.0, batch):
            trained, _ = answer_loss_sum(model, batch)
        model.eval()
        with noisy(model, 5.0, batch):
            evaluated, _ = answer_loss_sum(model, batch)
    assert not torch.allclose(trained, clean)
    torch.testing.assert_close(evaluated, clean, rtol=0, atol=0)  # the tiny model has no dropout: eval = train without noise
