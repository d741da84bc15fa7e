"""core/checkpoint.py: rotation, abandoned branches, a faithful round trip, no code in any part, and a full disk."""

from __future__ import annotations

import errno
import json
import random
from pathlib import Path

import pytest
import torch

from qdtool.config import TrainConfig
from qdtool.core.checkpoint import (
    check_same_data,
    checkpoint_dirs,
    data_fingerprint,
    drop_after,
    latest_checkpoint,
    load_checkpoint,
    resumable_state,
    rng_state,
    save_checkpoint,
)
from qdtool.core.files import WriteError
from qdtool.core.lora import add_lora
from qdtool.errors import TrainingError

from conftest import build_tiny_model


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
    for (name, a), b in zip(model.named_parameters(), other.parameters(), strict=True):  # the same architecture
        if a.requires_grad:
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert other_sched.last_epoch == scheduler.last_epoch
    torch.testing.assert_close(other_opt.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])

    drop_after(root, 4)
    assert [p.name for p in checkpoint_dirs(root)] == ["step-0000004"]
    save_checkpoint(root, 5, model, optimizer, scheduler, {}, keep=2)
    assert not list(root.glob(".tmp-*"))


# --- nothing in a checkpoint can run code ------------------------------------------------------

class _Planted:
    """Unpickling this creates `marker`: what a hostile checkpoint could do instead (run a shell command)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant(path, marker):
    torch.save(_Planted(marker), path)


def _refuse_unpickling(monkeypatch):
    import pickle

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint load unpickled something")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)


def _trained(tiny_tokenizer):
    model, optimizer, scheduler = _objects(len(tiny_tokenizer), 0)
    sum(p.sum() for p in model.parameters() if p.requires_grad).backward()
    optimizer.step()
    scheduler.step()
    return model, optimizer, scheduler


def test_pickles_planted_beside_every_part_are_never_loaded(tmp_path, tiny_tokenizer, monkeypatch):
    model, optimizer, scheduler = _trained(tiny_tokenizer)
    path = save_checkpoint(tmp_path / "checkpoints", 2, model, optimizer, scheduler, {}, keep=2)
    marker = tmp_path / "code-ran"
    for part in ("optimizer", "scheduler", "scaler", "rng", "adapter"):  # the names format 1 used, and more
        _plant(path / f"{part}.pt", marker)
    _refuse_unpickling(monkeypatch)
    other, other_opt, other_sched = _objects(len(tiny_tokenizer), 1)
    assert load_checkpoint(path, other, other_opt, other_sched)["step"] == 2
    assert not marker.exists()
    torch.testing.assert_close(other_opt.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])


@pytest.mark.parametrize("part", ["adapter.safetensors", "optimizer.safetensors", "scheduler.safetensors", "rng.safetensors",
                                  "trainer_state.json"])
def test_a_pickle_in_place_of_a_part_is_refused_without_running_it(tmp_path, tiny_tokenizer, part):
    model, optimizer, scheduler = _trained(tiny_tokenizer)
    path = save_checkpoint(tmp_path / "checkpoints", 2, model, optimizer, scheduler, {}, keep=2)
    marker = tmp_path / "code-ran"
    _plant(path / part, marker)
    other, other_opt, other_sched = _objects(len(tiny_tokenizer), 1)
    with pytest.raises(TrainingError, match=rf"{part} is damaged or not a qdtool checkpoint file .*--overwrite"):
        load_checkpoint(path, other, other_opt, other_sched)
    assert not marker.exists()


def test_an_old_pickle_checkpoint_is_refused_unread(tmp_path, tiny_tokenizer, monkeypatch):
    """Format 1 stored torch pickles; rng.pt was loaded with weights_only=False, which runs any code in it."""
    old = tmp_path / "checkpoints" / "step-0000004"
    old.mkdir(parents=True)
    (old / "trainer_state.json").write_text(json.dumps({"step": 4, "best_eval_loss": 1.0}))
    marker = tmp_path / "code-ran"
    for part in ("optimizer", "scheduler", "rng"):
        _plant(old / f"{part}.pt", marker)
    _refuse_unpickling(monkeypatch)
    model, optimizer, scheduler = _objects(len(tiny_tokenizer), 0)
    with pytest.raises(TrainingError, match="written by an older qdtool as torch pickle files .* pass --overwrite to start over"):
        resumable_state(old)
    with pytest.raises(TrainingError, match="written by an older qdtool"):
        load_checkpoint(old, model, optimizer, scheduler)
    assert not marker.exists()


class _Holder:
    """A stand-in scheduler/scaler: hands out `state`, keeps what it is given back."""

    def __init__(self, state=None):
        self.state, self.loaded = state, None

    def state_dict(self):
        return self.state

    def load_state_dict(self, state):
        self.loaded = state


def test_every_kind_of_state_comes_back_exactly(tmp_path, tiny_tokenizer):
    """Tuples, int keys, None, inf, tensors that share memory, keys that look like our own tags, and
    per-process RNG states (Python's `random` tuple included) survive safetensors + JSON unchanged."""
    model, optimizer, _ = _trained(tiny_tokenizer)
    base = torch.arange(6.0)
    tricky = {"ints": {0: base, 7: base[:2]}, "tuple": (1, 2.5, None, "x"), "inf": float("inf"), "flag": True,
              "tags": {"__tensor__": "0"}, "empty": torch.zeros(0, dtype=torch.int64), "bytes": torch.tensor([1, 2], dtype=torch.uint8)}
    ranks = []
    for seed in (10, 11):
        torch.manual_seed(seed)
        random.seed(seed)
        ranks.append(rng_state())
    scaler = _Holder({"scale": 65536.0, "_growth_tracker": 3})
    path = save_checkpoint(tmp_path / "c", 2, model, optimizer, _Holder(tricky), {}, keep=1, scaler=scaler, rng_states=ranks)

    loaded_sched, loaded_scaler = _Holder(), _Holder()
    other, other_opt, _ = _objects(len(tiny_tokenizer), 1)
    load_checkpoint(path, other, other_opt, loaded_sched, loaded_scaler, rank=1, world=2)
    got = loaded_sched.loaded
    assert set(got) == set(tricky) and set(got["ints"]) == {0, 7}
    torch.testing.assert_close(got["ints"][0], base, rtol=0, atol=0)
    torch.testing.assert_close(got["ints"][7], base[:2], rtol=0, atol=0)
    assert got["tuple"] == (1, 2.5, None, "x") and got["inf"] == float("inf") and got["flag"] is True
    assert got["tags"] == {"__tensor__": "0"}
    assert got["empty"].shape == (0,) and got["empty"].dtype == torch.int64 and got["bytes"].tolist() == [1, 2]
    assert loaded_scaler.loaded == {"scale": 65536.0, "_growth_tracker": 3}
    assert other_opt.state_dict()["param_groups"][0]["betas"] == (0.9, 0.999)
    # process 1 of 2 gets its own generators back, not process 0's
    assert torch.equal(torch.get_rng_state(), ranks[1]["torch"]) and random.getstate() == ranks[1]["python"]


def test_disk_full_during_a_save_removes_the_partial_checkpoint_and_keeps_the_last_good_one(tmp_path, tiny_tokenizer, monkeypatch):
    model, optimizer, scheduler = _trained(tiny_tokenizer)
    root = tmp_path / "checkpoints"
    save_checkpoint(root, 2, model, optimizer, scheduler, {"best_eval_loss": 1.5}, keep=2)
    real = Path.write_bytes

    def full(self, data):
        if self.name == "optimizer.safetensors":  # the adapter is already written: the partial dir holds a file
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(WriteError, match=r"no space left on the device holding .*step-0000004.* it needs about \d+\.\d+ [MG]B"):
        save_checkpoint(root, 4, model, optimizer, scheduler, {}, keep=2)
    assert sorted(p.name for p in root.iterdir()) == ["step-0000002"]  # no .tmp-step-* left filling the disk
    monkeypatch.setattr(Path, "write_bytes", real)
    other, other_opt, other_sched = _objects(len(tiny_tokenizer), 1)
    assert load_checkpoint(latest_checkpoint(root), other, other_opt, other_sched) == {"best_eval_loss": 1.5, "step": 2}
    save_checkpoint(root, 4, model, optimizer, scheduler, {}, keep=2)  # room again: the next save works
    assert [p.name for p in checkpoint_dirs(root)] == ["step-0000002", "step-0000004"]


def test_data_fingerprint_names_the_file_that_changed(tmp_path):
    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    train.write_text('{"question": "a"}\n')
    val.write_text('{"question": "b"}\n')
    saved = {"data": data_fingerprint([train], [val])}
    assert saved["data"]["train"][0]["size"] == 18 and len(saved["data"]["train"][0]["sha256"]) == 64
    check_same_data(tmp_path / "step-2", saved, data_fingerprint([train], [val]))  # unchanged: resumes
    val.write_text('{"question": "c"}\n')  # same size, other bytes
    with pytest.raises(TrainingError, match=rf"{val} \(eval data\) changed since .*step-2 was written: it was 18 bytes.*--overwrite"):
        check_same_data(tmp_path / "step-2", saved, data_fingerprint([train], [val]))
    with pytest.raises(TrainingError, match=r"the eval data no longer includes .*val.jsonl.*new --output-dir"):
        check_same_data(tmp_path / "step-2", saved, data_fingerprint([train], []))


@pytest.mark.parametrize("edit", [{"step": "4"}, {"step": -1}, {"supervised_tokens": 1.5}, {"sharded": "yes"},
                                  {"best_eval_loss": [1]}, {"format": 1}])
def test_a_tampered_trainer_state_is_refused_with_the_field(tmp_path, tiny_tokenizer, edit):
    model, optimizer, scheduler = _trained(tiny_tokenizer)
    path = save_checkpoint(tmp_path / "checkpoints", 2, model, optimizer, scheduler, {"supervised_tokens": 10}, keep=1)
    state = json.loads((path / "trainer_state.json").read_text())
    (path / "trainer_state.json").write_text(json.dumps({**state, **edit}))
    key = next(iter(edit))
    expected = "format 1; this qdtool reads format 2" if key == "format" else rf"trainer_state.json is damaged .*bad value for {key}"
    with pytest.raises(TrainingError, match=expected):
        resumable_state(path)


def test_a_checkpoint_without_a_valid_data_record_is_refused(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text("{}\n")
    now = data_fingerprint([train], [])
    for saved in ({}, {"data": "x"}, {"data": {"train": "abc", "eval": []}}, {"data": {"train": [1], "eval": []}}):
        with pytest.raises(TrainingError, match="trainer_state.json is damaged .*no valid record of the data"):
            check_same_data(tmp_path / "step-2", saved, now)


def test_a_trainer_state_that_is_not_json_is_refused_and_utf8_state_comes_back(tmp_path, tiny_tokenizer):
    model, optimizer, scheduler = _trained(tiny_tokenizer)
    root = tmp_path / "checkpoints"
    (root / ".old-step-0000002-1-abcdef").mkdir(parents=True)  # a set-aside dir of a killed save
    path = save_checkpoint(root, 2, model, optimizer, scheduler, {"run": "학습 é"}, keep=1)
    assert [p.name for p in root.iterdir()] == ["step-0000002"]
    assert '"run": "학습 é"' in (path / "trainer_state.json").read_text(encoding="utf-8")
    assert resumable_state(path)["run"] == "학습 é"
    (path / "trainer_state.json").write_text('{"step": 2,')
    with pytest.raises(TrainingError, match=r"trainer_state.json is damaged or not a qdtool checkpoint file \(JSONDecodeError: "):
        resumable_state(path)


def _full_objects(vocab: int, seed: int, train_embeddings: bool = False):
    """A method-full model (no PEFT) with its optimizer and scheduler, one step in."""
    from qdtool.core.lora import make_trainable

    torch.manual_seed(seed)
    model = make_trainable(build_tiny_model(vocab, seed=seed, tied=True), TrainConfig(method="full", train_embeddings=train_embeddings))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (1 + s))
    sum((p * p).sum() for p in model.parameters() if p.requires_grad).backward()
    optimizer.step()
    scheduler.step()
    return model, optimizer, scheduler


@pytest.mark.parametrize("train_embeddings", [False, True])
def test_a_full_fine_tuning_checkpoint_restores_every_trained_weight(tmp_path, tiny_tokenizer, train_embeddings):
    from safetensors.torch import load_file

    model, optimizer, scheduler = _full_objects(len(tiny_tokenizer), 0, train_embeddings)
    path = save_checkpoint(tmp_path / "checkpoints", 3, model, optimizer, scheduler, {"method": "full"}, keep=2)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(load_file(str(path / "adapter.safetensors"))) == trained  # the weights that train, named as in state_dict()
    assert ("model.embed_tokens.weight" in trained) is train_embeddings

    other, other_opt, other_sched = _full_objects(len(tiny_tokenizer), 1, train_embeddings)
    assert load_checkpoint(path, other, other_opt, other_sched) == {"method": "full", "step": 3}
    for (name, a), b in zip(model.named_parameters(), other.parameters(), strict=True):
        if a.requires_grad:
            torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)
    assert other.lm_head.weight is other.model.embed_tokens.weight  # still tied
    torch.testing.assert_close(other_opt.state_dict()["state"][5]["exp_avg_sq"], optimizer.state_dict()["state"][5]["exp_avg_sq"])

    # a checkpoint of other trainable weights (written with the other train_embeddings) is refused, with what to do
    mismatched, opt, sched = _full_objects(len(tiny_tokenizer), 2, not train_embeddings)
    with pytest.raises(TrainingError, match=r"adapter.safetensors holds other weights than this run trains .*model.embed_tokens.weight"
                                            r".*\(train_embeddings\?\)"):
        load_checkpoint(path, mismatched, opt, sched)
