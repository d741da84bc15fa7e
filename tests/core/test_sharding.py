"""core/sharding.py (`sharding: fsdp`): the loss as the FSDP root module, whole LoRA weights and
optimizer state from shards; and `qdtool train --sharding fsdp` under torchrun (2 CPU processes)."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from torch.distributed.fsdp import FSDPModule
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from qdtool.core import sharding
from qdtool.errors import ConfigError

from conftest import build_tiny_model
from torchrun_support import (
    assert_same_run,
    kill_after_step_4_then_resume,
    metric,
    single_process_reference,
    torchrun,
    train_args,
)

IGNORE = -100


@pytest.fixture
def one_process_group(tmp_path):
    """A gloo group of this one process: FSDP2 runs here, without torchrun (every shard is whole)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _lora_model(tied: bool = False):
    from peft import LoraConfig, get_peft_model

    model = build_tiny_model(96, seed=3, tied=tied)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # PEFT starts lora_B at zero: give the adapter a visible effect on the loss
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)
    return model


def _packed_batch() -> dict[str, torch.Tensor]:
    """Two samples packed in one row (positions restart at 0), answers supervised, prompts not."""
    torch.manual_seed(0)
    input_ids = torch.randint(3, 96, (1, 12))
    labels = input_ids.clone()
    labels[0, :3] = IGNORE
    labels[0, 6:9] = IGNORE
    position_ids = torch.tensor([[0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5]])
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}


def _reference_loss(model, batch) -> tuple[torch.Tensor, int]:
    """Sum of next-token cross-entropies at supervised positions, each packed sample run on its own."""
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist() + [batch["input_ids"].shape[1]]
    total, count = torch.zeros(()), 0
    for start, end in zip(starts[:-1], starts[1:], strict=True):
        logits = model(input_ids=batch["input_ids"][:, start:end]).logits[0, :-1]
        targets = batch["labels"][0, start + 1:end]
        total = total + torch.nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="sum")
        count += int((targets != IGNORE).sum())
    return total, count


def test_answer_loss_is_the_sum_and_count_of_the_answer_token_losses():
    model = _lora_model()
    batch = _packed_batch()
    want, count = _reference_loss(model, batch)
    got, got_count = sharding.AnswerLoss(model)(**batch)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert int(got_count) == count == 6
    # The packed positions reach the model: without them the second sample would attend as one sequence.
    unpacked, _ = sharding.AnswerLoss(model)(batch["input_ids"], batch["labels"])
    assert abs(unpacked.item() - want.item()) > 1e-3


def test_layer_classes_are_the_decoder_layers_the_model_declares():
    assert sharding._layer_classes(_lora_model()) == {"LlamaDecoderLayer"}
    assert sharding._layer_classes(torch.nn.Linear(2, 2)) == set()


def test_a_model_without_declared_layers_is_refused(one_process_group):
    with pytest.raises(ConfigError, match="found no decoder layers to shard in Linear .*use sharding none"):
        sharding.shard(torch.nn.Linear(2, 2), "cpu")


def test_whole_lora_weights_of_an_unsharded_model_are_its_own():
    from peft import get_peft_model_state_dict

    model = _lora_model()
    weights = sharding.full_lora_weights(model)
    own = {name: value for name, value in model.state_dict().items() if "lora_" in name}
    assert sorted(weights) == sorted(own) and len(own) == 8  # A and B of q and v in 2 layers
    for name, value in weights.items():
        torch.testing.assert_close(value, own[name], rtol=0, atol=0)
    saved = sharding.full_adapter_state(model)
    want = get_peft_model_state_dict(model)
    assert sorted(saved) == sorted(want)  # PEFT's names, as a checkpoint stores them
    for name, value in saved.items():
        torch.testing.assert_close(value, want[name], rtol=0, atol=0)


def test_a_sharded_model_trains_as_the_whole_one(one_process_group):
    """FSDP2 over one process: the root's loss and the LoRA gradients equal the unsharded model's,
    and the LoRA weights and optimizer state come back as whole CPU tensors that load again."""
    model = _lora_model(tied=True)  # the head tied to the embeddings, as Gemma's: held by the root unit
    reference = copy.deepcopy(model)
    batch = _packed_batch()
    want, count = _reference_loss(reference, batch)
    want.backward()

    root = sharding.shard(model, "cpu")
    assert isinstance(root, FSDPModule)  # the root unit: embeddings, final norm and the tied head
    assert [isinstance(m, FSDPModule) for m in model.modules() if isinstance(m, LlamaDecoderLayer)] == [True, True]  # a unit each
    got, got_count = root(**batch)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert int(got_count) == count
    got.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    for name, param in reference.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(sharding._full(grads[name]), param.grad, rtol=1e-4, atol=1e-6)

    weights = sharding.full_lora_weights(model)
    assert sorted(weights) == sorted(n for n in reference.state_dict() if "lora_" in n)
    for name, value in weights.items():
        assert type(value) is torch.Tensor and value.device.type == "cpu"  # gathered, not a DTensor
        torch.testing.assert_close(value, reference.state_dict()[name], rtol=0, atol=0)

    optimizer = torch.optim.AdamW([p for p in root.parameters() if p.requires_grad], lr=1e-2)
    optimizer.step()
    state = sharding.full_optimizer_state(root, optimizer)
    moments = {name: s["exp_avg"] for name, s in state["state"].items()}
    assert len(moments) == 8 and all(type(m) is torch.Tensor for m in moments.values())
    root.zero_grad(set_to_none=True)  # as in a resumed process: no gradients yet
    fresh = torch.optim.AdamW([p for p in root.parameters() if p.requires_grad], lr=1e-2)
    sharding.load_full_optimizer_state(root, fresh, state)
    reloaded = sharding.full_optimizer_state(root, fresh)["state"]
    for name, value in moments.items():
        torch.testing.assert_close(reloaded[name]["exp_avg"], value, rtol=0, atol=0)


# --- qdtool train --sharding fsdp under torchrun ------------------------------------------------

def test_fsdp_two_processes_match_a_single_process_run(tiny_model_dir, tmp_path):
    """With gradient checkpointing, as configs/fsdp.yaml trains (the resume test below runs without)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    single = tmp_path / "single"
    single_process_reference(tiny_model_dir, single, env, "--gradient-checkpointing")

    fsdp = tmp_path / "fsdp"
    proc = torchrun(["-m", "qdtool", *train_args(tiny_model_dir, fsdp, "--sharding", "fsdp", "--gradient-checkpointing")], env)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, (stdout[-2000:], stderr[-4000:])
    assert "FSDP: base weights sharded over 2 processes" in stderr
    assert stdout.count("training summary") == 1
    assert 1 in metric(fsdp, "samples")  # a step with one micro-batch: the second process ran a weight-0 pass
    assert_same_run(fsdp, single)


def test_fsdp_resume_after_kill_9_continues_the_same_curve(tiny_tokenizer, tmp_path):
    """A checkpoint written under FSDP (adapter and optimizer gathered whole) resumes under FSDP:
    same losses, gradient norms and adapter as one uninterrupted process. The model ties its LM
    head to the embeddings, as Gemma does."""
    model_dir = tmp_path / "tied-model"
    build_tiny_model(len(tiny_tokenizer), seed=1, tied=True).save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    reference = tmp_path / "reference"
    single_process_reference(model_dir, reference, env)

    out = tmp_path / "fsdp"
    kill_after_step_4_then_resume(train_args(model_dir, out, "--sharding", "fsdp", "--save-steps", "2"), out, tmp_path, env)
    assert metric(out, "step") == metric(reference, "step")  # no step lost, none twice (eval rows included)
    assert_same_run(out, reference)
