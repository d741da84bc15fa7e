"""core/training/run.py: `train` end to end makes a complete, reproducible run directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from qdtool.config import load_train_config
from qdtool.core import training

from train_support import example_data, losses, make_config


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    return example_data(tmp_path_factory.mktemp("data"))


def test_run_dir_is_complete_and_eval_loss_falls(tiny_model_dir, data_file, tmp_path):
    out = tmp_path / "run"
    result = training.train(make_config(tiny_model_dir, data_file, out))
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "adapter" / "tokenizer_config.json").is_file()
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = load_train_config(out / "run_config.yaml")
    assert saved.model == str(tiny_model_dir) and saved.max_seq_len == 512
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in rows if "eval_loss" in r] == [0, 3, 6]
    step_row = next(r for r in rows if "loss" in r)
    assert {"lr", "grad_norm", "supervised_tokens_per_s", "peak_memory_gb", "epoch"} <= set(step_row)
    assert result.final_eval_loss < result.first_eval_loss
    assert result.train_records == 32 and result.eval_records == 8
    assert not (out / "checkpoints").exists()
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["steps"] == 6 and summary["supervised_tokens"] == result.supervised_tokens > 0


def test_same_seed_same_loss_curve(tiny_model_dir, data_file, tmp_path):
    training.train(make_config(tiny_model_dir, data_file, tmp_path / "a"))
    training.train(make_config(tiny_model_dir, data_file, tmp_path / "b"))
    training.train(make_config(tiny_model_dir, data_file, tmp_path / "c", seed=7))
    torch.testing.assert_close(torch.tensor(losses(tmp_path / "a")), torch.tensor(losses(tmp_path / "b")), rtol=0, atol=1e-6)
    assert losses(tmp_path / "a") != losses(tmp_path / "c")


def test_a_failing_tracker_never_kills_training(tiny_model_dir, data_file, tmp_path, monkeypatch):
    import wandb

    def broken(*args, **kwargs):
        raise RuntimeError("no network")

    monkeypatch.setattr(wandb, "init", broken)
    result = training.train(make_config(tiny_model_dir, data_file, tmp_path / "run", max_steps=2, report_to="wandb"))
    assert result.steps == 2
    assert any("wandb could not start" in w for w in result.warnings)
