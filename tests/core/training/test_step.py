"""core/training/step.py: one optimizer step: the token-mean loss over the step, a NaN stops with its step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from qdtool.config import TrainConfig
from qdtool.core import training
from qdtool.core.distributed import Dist
from qdtool.core.training import step as one_step
from qdtool.errors import TrainingError

from train_support import EXAMPLES, example_data, make_config


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    return example_data(tmp_path_factory.mktemp("data"))


def test_nan_loss_stops_with_the_step(tiny_model_dir, data_file, tmp_path, monkeypatch):
    real = one_step.answer_loss_sum

    def poisoned(model, batch):
        total, count = real(model, batch)
        return total * float("nan"), count

    monkeypatch.setattr(one_step, "answer_loss_sum", poisoned)
    with pytest.raises(TrainingError, match=r"the loss became nan at step 1\. Likely causes: a learning rate too high"):
        training.train(make_config(tiny_model_dir, data_file, tmp_path / "run"))


def test_grad_accumulation_equals_one_big_batch(tiny_tokenizer):
    """Two micro-batches (grad_accum 2) give the same update as one micro-batch holding both."""
    import copy

    from qdtool.core.batching import pack
    from qdtool.core.hardware import Device
    from qdtool.core.lora import add_lora
    from qdtool.core.prompts import encode_sample

    from conftest import build_tiny_model

    records = [json.loads(line) for line in (EXAMPLES / "strategyqa_train.jsonl").read_text().splitlines()[:4]]
    samples = [encode_sample(tiny_tokenizer, r["question"], r["sub_questions"]) for r in records]
    config = TrainConfig(lora_dropout=0.0, max_grad_norm=0.0, lora_r=4)
    torch.manual_seed(0)
    base = add_lora(build_tiny_model(len(tiny_tokenizer)).float(), config)
    for p in base.parameters():  # make LoRA B non-zero so every LoRA weight gets a gradient
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.02)
    updated = []
    for micro in ([pack(samples[:2], 10_000)[0], pack(samples[2:], 10_000)[0]], [pack(samples, 10_000)[0]]):
        model = copy.deepcopy(base).train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=1.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        one_step.train_step(model, optimizer, scheduler, None, None, micro, config, Device("cpu", "fp32", "CPU"), 0, Dist(),
                            one_step.loss_function(model), False)
        updated.append(torch.cat([p.detach().flatten() for p in params]))
    torch.testing.assert_close(updated[0], updated[1], rtol=1e-5, atol=1e-6)
    assert not torch.equal(updated[0], torch.cat([p.detach().flatten() for p in base.parameters() if p.requires_grad]))


def test_neftune_noise_reaches_the_training_step_only(tiny_tokenizer):
    """--neftune-alpha changes a training step's loss, and leaves no hook behind for evaluation."""
    import copy

    from qdtool.core.batching import pack
    from qdtool.core.hardware import Device
    from qdtool.core.lora import add_lora
    from qdtool.core.prompts import encode_sample

    from conftest import build_tiny_model

    records = [json.loads(line) for line in (EXAMPLES / "strategyqa_train.jsonl").read_text().splitlines()[:2]]
    micro = pack([encode_sample(tiny_tokenizer, r["question"], r["sub_questions"]) for r in records], 10_000)
    base = add_lora(build_tiny_model(len(tiny_tokenizer)).float(), TrainConfig(lora_dropout=0.0, lora_r=4))
    seen = {}
    for alpha in (0.0, 0.0, 15.0):
        model = copy.deepcopy(base).train()
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        config = TrainConfig(lora_dropout=0.0, lora_r=4, neftune_alpha=alpha)
        row = one_step.train_step(model, optimizer, scheduler, None, None, micro, config, Device("cpu", "fp32", "CPU"), 0, Dist(),
                                  one_step.loss_function(model), False)
        seen.setdefault(alpha, []).append(row["loss"])
        assert not model.get_input_embeddings()._forward_hooks
    assert seen[0.0][0] == seen[0.0][1] and abs(seen[15.0][0] - seen[0.0][0]) > 1e-4
