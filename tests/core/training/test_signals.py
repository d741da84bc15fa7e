"""core/training/signals.py: a killed or stopped run resumes on the same loss curve."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from qdtool.cli.app import app
from qdtool.core import training
from qdtool.core.training import decode
from qdtool.errors import TrainingInterrupted

from train_support import cli_args, example_data, losses, make_config, spawn, wait_for


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    return example_data(tmp_path_factory.mktemp("data"))


def test_kill_9_then_resume_continues_the_same_curve(tiny_model_dir, data_file, tmp_path):
    reference = tmp_path / "reference"
    proc = spawn(cli_args(tiny_model_dir, data_file, reference), slow=False)
    assert proc.wait(timeout=300) == 0, proc.communicate()

    out = tmp_path / "killed"
    proc = spawn(cli_args(tiny_model_dir, data_file, out), slow=True)
    wait_for(out / "checkpoints" / "step-0000004" / "trainer_state.json", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (out / "run_summary.json").exists()  # it really died mid-run
    assert max(json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()) >= 4

    resumed = spawn(cli_args(tiny_model_dir, data_file, out), slow=False)
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    assert "resuming from" in stderr
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines() if "loss" in json.loads(line)]
    assert steps == list(range(1, 11))  # no step lost, none twice
    torch.testing.assert_close(torch.tensor(losses(out)), torch.tensor(losses(reference)), rtol=0, atol=1e-5)


def test_sigterm_saves_a_checkpoint_and_says_how_to_resume(tiny_model_dir, data_file, tmp_path):
    out = tmp_path / "run"
    proc = spawn(cli_args(tiny_model_dir, data_file, out, steps=50), slow=True)
    wait_for(out / "metrics.jsonl", proc)
    while '"loss":' not in (out / "metrics.jsonl").read_text():  # a train step's row, not step 0's "eval_loss":
        time.sleep(0.02)  # a signal before the first step saves nothing (the test below)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "SIGTERM received: checkpoint saved at step" in stderr
    assert f"Resume with: qdtool train --config {out / 'run_config.yaml'}" in " ".join(stderr.split())
    state = json.loads(next((out / "checkpoints").glob("step-*/trainer_state.json")).read_text())
    assert 1 <= state["step"] < 50


def test_sigterm_during_the_step_0_evaluation_stops_cleanly_and_the_same_command_starts_over(tiny_model_dir, data_file,
                                                                                            tmp_path, monkeypatch):
    real = decode.eval_sari

    def stopping(run, step):
        if step == 0:  # the signal lands mid-evaluation, before any training step
            os.kill(os.getpid(), signal.SIGTERM)
        return real(run, step)

    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(decode, "eval_sari", stopping)
        with pytest.raises(TrainingInterrupted, match="during the step-0 evaluation, before the first training step") as caught:
            training.train(make_config(tiny_model_dir, data_file, out))
    assert caught.value.exit_code == 143
    assert f"qdtool train --config {out / 'run_config.yaml'}" in str(caught.value)
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").iterdir())

    done = CliRunner().invoke(app, ["train", "--config", str(out / "run_config.yaml")])
    assert done.exit_code == 0, done.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 7))
    assert json.loads((out / "run_summary.json").read_text())["steps"] == 6
