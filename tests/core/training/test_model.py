"""core/training/model.py: FSDP only with several processes; a checkpoint resumes only in the layout that wrote it."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from qdtool.core import training
from qdtool.core.training import step as one_step
from qdtool.errors import ConfigError, TrainingInterrupted

from train_support import example_data, make_config


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    return example_data(tmp_path_factory.mktemp("data"))


def test_fsdp_in_one_process_warns_on_cpu_and_stops_on_a_gpu(tiny_model_dir, data_file, tmp_path, monkeypatch):
    result = training.train(make_config(tiny_model_dir, data_file, tmp_path / "run", max_steps=1, sharding="fsdp"))
    assert result.steps == 1
    assert any("sharding fsdp needs several processes" in w for w in result.warnings)
    for bad, reason in (({"quantization": "4bit"}, "quantization 4bit is not supported with it"), ({"precision": "fp16"}, "not fp16"),
                        ({"optimizer": "paged_adamw_8bit"}, "not paged_adamw_8bit")):
        with pytest.raises(ConfigError, match=reason):
            make_config(tiny_model_dir, data_file, tmp_path / "bad", sharding="fsdp", **bad)
    # on a GPU one process would hold the whole model FSDP was meant to split: stop before loading it
    from qdtool.core import hardware, modeling

    monkeypatch.setattr(hardware, "select_device", lambda config: hardware.Device("cuda", "bf16", "Fake GPU"))
    monkeypatch.setattr(modeling, "load_base_model", lambda *a, **k: pytest.fail("the model must not load"))
    with pytest.raises(ConfigError, match="launch with torchrun --nproc_per_node N"):
        training.train(make_config(tiny_model_dir, data_file, tmp_path / "gpu", sharding="fsdp"))


def test_a_checkpoint_resumes_only_as_it_was_written(tiny_model_dir, data_file, tmp_path, monkeypatch):
    """The batch stream (micro-batches per step) and the optimizer state's layout depend on the number
    of processes and on FSDP: a checkpoint written otherwise is refused, with what to do."""
    out = tmp_path / "run"
    real = one_step.train_step

    def stop_after_two(*args, **kwargs):
        row = real(*args, **kwargs)
        if row["step"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # the loop saves a checkpoint at the end of this step
        return row

    monkeypatch.setattr(one_step, "train_step", stop_after_two)
    with pytest.raises(TrainingInterrupted):
        training.train(make_config(tiny_model_dir, data_file, out))
    monkeypatch.setattr(one_step, "train_step", real)
    state_file = out / "checkpoints" / "step-0000002" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    assert (state["processes"], state["sharded"]) == (1, False)
    state_file.write_text(json.dumps({**state, "processes": 2, "sharded": True}))
    with pytest.raises(ConfigError, match="written by 2 processes with FSDP; this run has 1 process. Resume it as it was written"):
        training.train(make_config(tiny_model_dir, data_file, out))
    state_file.write_text(json.dumps(state))
    assert training.train(make_config(tiny_model_dir, data_file, out)).resumed_from == str(state_file.parent)


def test_a_full_run_resumes_its_own_curve_and_refuses_a_checkpoint_of_the_other_method(tiny_model_dir, data_file, tmp_path, monkeypatch):
    """Method full: the checkpoint holds every trained weight and its AdamW state, so a resumed run continues the
    uninterrupted run's loss curve; a checkpoint whose weights are LoRA adapters cannot be resumed by it."""
    import torch

    from train_support import losses, stop_after

    reference = tmp_path / "reference"
    training.train(make_config(tiny_model_dir, data_file, reference, method="full", lr=1e-3))
    out = tmp_path / "run"
    real = one_step.train_step
    stop_after(monkeypatch, 2)
    with pytest.raises(TrainingInterrupted):
        training.train(make_config(tiny_model_dir, data_file, out, method="full", lr=1e-3))
    monkeypatch.setattr(one_step, "train_step", real)
    state_file = out / "checkpoints" / "step-0000002" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    assert state["method"] == "full"
    state_file.write_text(json.dumps({**state, "method": "lora"}))
    with pytest.raises(ConfigError, match="written by a method lora run; this run has method full. Resume it with the method it was"):
        training.train(make_config(tiny_model_dir, data_file, out, method="full", lr=1e-3))
    state_file.write_text(json.dumps(state))
    result = training.train(make_config(tiny_model_dir, data_file, out, method="full", lr=1e-3))
    assert result.resumed_from == str(state_file.parent) and result.method == "full"
    torch.testing.assert_close(torch.tensor(losses(out)), torch.tensor(losses(reference)), rtol=0, atol=1e-5)
