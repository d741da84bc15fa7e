"""core/cards.py: the base-model reference in adapter_config.json (rewritten atomically) and the adapter card."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from qdtool.config import TrainConfig
from qdtool.core import files
from qdtool.core.cards import DataFile, adapter_card, record_base_model
from qdtool.core.files import DamagedFileError, WriteError

PEFT_CONFIG = {"r": 16, "base_model_name_or_path": "/root/.cache/qdtool/embedded-abc", "target_modules": ["q_proj"], "peft_type": "LORA"}


def test_the_base_model_is_recorded_as_given_and_the_rest_kept(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps(PEFT_CONFIG))
    record_base_model(tmp_path, TrainConfig(model=" Qwen/Qwen2.5-0.5B-Instruct "))
    text = (tmp_path / "adapter_config.json").read_text(encoding="utf-8")
    assert json.loads(text) == {**PEFT_CONFIG, "base_model_name_or_path": "Qwen/Qwen2.5-0.5B-Instruct"}
    assert text.index('"base_model_name_or_path"') < text.index('"peft_type"') < text.index('"r"') and text.endswith("}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json"]


def test_a_full_disk_leaves_adapter_config_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "adapter_config.json"
    path.write_text(json.dumps(PEFT_CONFIG))

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(WriteError, match="no space left on the device holding .*adapter_config.json"):
        record_base_model(tmp_path, TrainConfig())
    assert json.loads(path.read_text()) == PEFT_CONFIG and sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json"]


def test_a_damaged_adapter_config_is_named(tmp_path):
    (tmp_path / "adapter_config.json").write_text('{"r": 16,')
    with pytest.raises(DamagedFileError, match="adapter_config.json is not valid JSON"):
        record_base_model(tmp_path, TrainConfig())


def test_the_card_of_a_hub_model_names_it_as_base_model(tmp_path):
    config = TrainConfig(model="Qwen/Qwen2.5-0.5B-Instruct", max_steps=40)
    result = SimpleNamespace(train_records=90, eval_records=5, dropped=1, truncated=0, steps=40, first_eval_loss=2.0,
                             final_eval_loss=1.0, best_eval_loss=None, precision="bf16", device="cuda", best_eval_sari=None,
                             final_eval_sari=None, selected_step=None, selected_by="eval_loss", selected_score=None)
    card = adapter_card(tmp_path / "run", config, result, [DataFile("train", Path("train.jsonl"), 95, "c" * 64)])
    assert card.startswith("---\nlibrary_name: peft\nbase_model: Qwen/Qwen2.5-0.5B-Instruct\n")
    assert "| training data | `train.jsonl` (bundled with qdtool): 95 records (sha256 cccccccccccc) |" in card
    assert "| eval data | 5 records held out from the training data (eval_split 0.05, at most 200, seed 42) |" in card
    assert "| steps | 40 optimizer steps (max_steps 40) |" in card
    assert "| eval loss (answer tokens) | 2.0000 at start → 1.0000 at end (best -) |" in card
