"""core/lora.py: LoRA on a tiny model; only the adapters train, and a start that changes nothing."""

from __future__ import annotations

import pytest
import torch

from qdtool.config import TrainConfig
from qdtool.core.lora import add_lora
from qdtool.errors import ConfigError

from conftest import build_tiny_model

# The 2-layer, 64-wide tiny Llama: (in, out) of every linear layer but the LM head.
_HIDDEN, _KV, _MLP = 64, 2 * 16, 128
_LINEARS = {"q_proj": (_HIDDEN, _HIDDEN), "k_proj": (_HIDDEN, _KV), "v_proj": (_HIDDEN, _KV), "o_proj": (_HIDDEN, _HIDDEN),
            "gate_proj": (_HIDDEN, _MLP), "up_proj": (_HIDDEN, _MLP), "down_proj": (_MLP, _HIDDEN)}


@pytest.mark.parametrize(("target", "modules"), [("all-linear", list(_LINEARS)), (["q_proj", "v_proj"], ["q_proj", "v_proj"])])
def test_only_the_adapters_train_and_they_start_at_zero(tiny_tokenizer, target, modules):
    base = build_tiny_model(len(tiny_tokenizer))
    ids = torch.tensor([tiny_tokenizer("Was Aristotle alive?")["input_ids"]])
    with torch.no_grad():
        before = base(input_ids=ids).logits
    model = add_lora(base, TrainConfig(lora_r=4, lora_target=target, lora_dropout=0.0))
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert sum(trainable.values()) == 2 * sum(4 * (i + o) for name, (i, o) in _LINEARS.items() if name in modules)  # 2 layers
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, before)  # B = 0: the adapted model starts as the base


def test_a_target_that_matches_nothing_is_a_config_error(tiny_tokenizer):
    with pytest.raises(ConfigError, match=r"^lora_target \['qkv'\] does not match this model's modules"):
        add_lora(build_tiny_model(len(tiny_tokenizer)), TrainConfig(lora_target=["qkv"]))


@pytest.mark.parametrize("checkpointing", [False, True])
def test_checkpointing_gives_the_blocks_an_input_that_requires_grad(tiny_tokenizer, checkpointing):
    """Checkpointed blocks recompute from their input; with frozen embeddings it must still require grad."""
    model = add_lora(build_tiny_model(len(tiny_tokenizer)), TrainConfig(lora_r=4, gradient_checkpointing=checkpointing))
    embedded = model.get_input_embeddings()(torch.tensor([[5, 6, 7]]))
    assert embedded.requires_grad is checkpointing


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("train_embeddings", [False, True])
def test_full_fine_tuning_trains_the_weights_themselves_but_the_embedding_unless_asked(tiny_tokenizer, tied, train_embeddings):
    from qdtool.core.lora import make_trainable

    base = build_tiny_model(len(tiny_tokenizer), tied=tied)
    for p in base.parameters():
        p.requires_grad_(False)  # whatever the base came with: method full decides
    model = make_trainable(base, TrainConfig(method="full", train_embeddings=train_embeddings))
    assert model is base and not hasattr(model, "peft_config")  # no PEFT wrapper
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == (set() if train_embeddings else {"model.embed_tokens.weight"})  # a tied head is that same tensor
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    embedding = len(tiny_tokenizer) * _HIDDEN
    everything = sum(p.numel() for p in model.parameters())
    assert trainable == everything - (0 if train_embeddings else embedding)
    assert model.lm_head.weight.requires_grad is (train_embeddings or not tied)
