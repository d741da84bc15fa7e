"""`qdtool probe-gpu` and `qdtool train --preset` on the command line."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from conftest import fake_nvml
from qdtool.cli.app import app

runner = CliRunner()


def test_probe_gpu_with_two_fake_gpus(monkeypatch):
    fake_nvml(monkeypatch, [24, 24])
    result = runner.invoke(app, ["probe-gpu", "--model", "Qwen/Qwen2.5-7B-Instruct", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [g["name"] for g in report["hardware"]["gpus"]] == ["Fake GPU 24GB", "Fake GPU 24GB"]
    assert report["preset"]["name"] == "auto" and report["preset"]["estimate"]["total_gib"] <= 24 * 0.92
    table = runner.invoke(app, ["probe-gpu", "--model", "Qwen/Qwen2.5-7B-Instruct"], env={"COLUMNS": "160"})
    assert table.exit_code == 0 and "memory estimate for Qwen/Qwen2.5-7B-Instruct" in table.output and "fits the plan" in table.output


def test_train_preset_applies_under_flags(captured_train):
    seen = captured_train
    runner.invoke(app, ["train", "--preset", "cpu", "--lr", "1e-3"])
    assert seen["config"].batch_tokens == 1024 and seen["config"].lr == 1e-3 and seen["config"].max_seq_len == 256
    result = runner.invoke(app, ["train", "--preset", "nope"])
    assert result.exit_code == 1 and "unknown preset 'nope'" in result.output


def test_probe_gpu_plans_fsdp_for_a_model_no_single_gpu_holds(monkeypatch):
    fake_nvml(monkeypatch, [12] * 8)
    result = runner.invoke(app, ["probe-gpu", "--model", "Qwen/Qwen2.5-14B-Instruct"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "per GPU with FSDP over 8" in result.output and "sharding" in result.output and "fsdp" in result.output
    assert "torchrun --nproc_per_node 8" in " ".join(result.output.split())
