"""core/training/setup.py: what can fail cheaply fails before the model loads; a resume checks its data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from qdtool.core import training
from qdtool.errors import ConfigError, TrainingError, TrainingInterrupted

from train_support import example_data, make_config, stop_after


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    return example_data(tmp_path_factory.mktemp("data"))


def test_cpu_refuses_quantization_before_loading(tiny_model_dir, data_file, tmp_path, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    for option in ({"quantization": "4bit"}, {"quantization": "8bit"}, {"optimizer": "paged_adamw_8bit"}):
        with pytest.raises(ConfigError, match="needs a CUDA GPU"):
            training.train(make_config(tiny_model_dir, data_file, tmp_path / "q", **option))
    assert not (tmp_path / "q" / "metrics.jsonl").exists()


def test_resume_refuses_changed_data_and_never_runs_a_planted_pickle(tiny_model_dir, data_file, tmp_path, monkeypatch):
    from qdtool.core import modeling

    data = tmp_path / "train.jsonl"
    data.write_bytes(data_file.read_bytes())
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        stop_after(patch, 2)
        with pytest.raises(TrainingInterrupted):
            training.train(make_config(tiny_model_dir, data, out))
    step_2 = out / "checkpoints" / "step-0000002"
    fingerprint = json.loads((step_2 / "trainer_state.json").read_text())["data"]
    assert fingerprint["train"][0]["path"] == str(data) and fingerprint["train"][0]["size"] == data.stat().st_size

    original = data.read_bytes()
    lines = original.decode().splitlines(keepends=True)
    data.write_text("".join(lines[1:] + lines[:1]), encoding="utf-8")  # same records, same size, other order
    with monkeypatch.context() as patch:
        patch.setattr(modeling, "load_base_model", lambda *a, **k: pytest.fail("the model must not load"))
        with pytest.raises(TrainingError, match=rf"{data} \(train data\) changed since {step_2} was written.*pass --overwrite"):
            training.train(make_config(tiny_model_dir, data, out))

    data.write_bytes(original)
    marker = tmp_path / "code-ran"

    class Planted:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    for part in ("optimizer", "scheduler", "rng"):  # what a shared run dir could hold under format 1's names
        torch.save(Planted(), step_2 / f"{part}.pt")
    result = training.train(make_config(tiny_model_dir, data, out))
    assert result.resumed_from == str(step_2) and result.steps == 6
    assert not marker.exists()


def test_a_saved_dataset_is_fingerprinted_by_its_records_and_a_file_by_its_bytes(data_file, tmp_path):
    from datasets import Dataset

    from qdtool.core import checkpoint
    from qdtool.core.data import read_dataset
    from qdtool.core.training.setup import _data_entry

    assert _data_entry(data_file, read_dataset(data_file)) == checkpoint.data_fingerprint([data_file], [])["train"][0]
    columns = {"question": ["Is Q big?", "Is R red?"], "sub_questions": [["What is Q?", "Is #1 big?"], ["What is R?", "Is #1 red?"]]}
    Dataset.from_dict(columns).save_to_disk(str(tmp_path / "a"))
    Dataset.from_dict(columns).save_to_disk(str(tmp_path / "b"))  # the same records, other files
    Dataset.from_dict({**columns, "question": ["Is Q big?", "Is R blue?"]}).save_to_disk(str(tmp_path / "c"))
    a, b, c = (_data_entry(str(tmp_path / n), read_dataset(tmp_path / n)) for n in "abc")
    assert a["path"] == str(tmp_path / "a") and a["size"] > 0
    assert a["sha256"] == b["sha256"] and a["sha256"] != c["sha256"]
