"""core/checkpoint.py: rotation, abandoned branches, and a faithful round trip."""

from __future__ import annotations

import torch

from conftest import build_tiny_model
from qdtool.config import TrainConfig
from qdtool.core.adapters import add_lora
from qdtool.core.checkpoint import checkpoint_dirs, drop_after, latest_checkpoint, load_checkpoint, save_checkpoint


def _objects(vocab: int, seed: int):
    torch.manual_seed(seed)
    model = add_lora(build_tiny_model(vocab), TrainConfig(lora_r=4))
    for p in model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.1)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (1 + s))
    return model, optimizer, scheduler


def test_round_trip_rotation_and_drop_after(tmp_path, tiny_tokenizer):
    model, optimizer, scheduler = _objects(len(tiny_tokenizer), 0)
    loss = sum(p.sum() for p in model.parameters() if p.requires_grad)
    loss.backward()
    optimizer.step()
    scheduler.step()
    root = tmp_path / "checkpoints"
    for step in (2, 4, 6):
        save_checkpoint(root, step, model, optimizer, scheduler, {"best_eval_loss": 1.5}, keep=2)
    assert [p.name for p in checkpoint_dirs(root)] == ["step-0000004", "step-0000006"]
    (root / ".tmp-step-0000008-1").mkdir()  # what a killed save leaves: never taken for a checkpoint
    assert latest_checkpoint(root).name == "step-0000006"

    expected_rng = torch.get_rng_state()
    other, other_opt, other_sched = _objects(len(tiny_tokenizer), 1)
    torch.manual_seed(123)
    state = load_checkpoint(root / "step-0000006", other, other_opt, other_sched)
    assert state == {"best_eval_loss": 1.5, "step": 6}
    assert torch.equal(torch.get_rng_state(), expected_rng)
    for (name, a), b in zip(model.named_parameters(), other.parameters()):
        if a.requires_grad:
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert other_sched.last_epoch == scheduler.last_epoch
    torch.testing.assert_close(other_opt.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])

    drop_after(root, 4)
    assert [p.name for p in checkpoint_dirs(root)] == ["step-0000004"]
    save_checkpoint(root, 5, model, optimizer, scheduler, {}, keep=2)
    assert not list(root.glob(".tmp-*"))
