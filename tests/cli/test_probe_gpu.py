"""`qdtool probe-gpu` and `qdtool train --preset` on the command line."""

from __future__ import annotations

import json
import re

from typer.testing import CliRunner

from qdtool.cli.app import app

from conftest import fake_nvml

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


def _estimate_shown(output: str) -> float:
    return float(re.search(r"estimated peak ([\d.]+) GiB \(budget [\d.]+ GiB\) for the settings this run trains with", output).group(1))


def test_train_preset_auto_shows_the_estimate_of_the_settings_it_trains_with(monkeypatch, captured_train):
    fake_nvml(monkeypatch, [80])
    shown = {}
    for name, flags in {"plan": [], "lora_r": ["--lora-r", "128"], "batch_tokens": ["--batch-tokens", "1024"]}.items():
        result = runner.invoke(app, ["train", "--preset", "auto", "--model", "Qwen/Qwen2.5-7B-Instruct", *flags], env={"COLUMNS": "400"})
        assert result.exit_code == 0, result.output
        shown[name] = _estimate_shown(result.output)
        assert (name == "plan") == ("kept as given" not in result.output)
    assert captured_train["config"].batch_tokens == 1024
    assert shown["lora_r"] > shown["plan"] > shown["batch_tokens"]


def test_train_preset_validates_the_merged_settings_once(captured_train):
    result = runner.invoke(app, ["train", "--preset", "cpu", "--batch-tokens", "300"])  # valid: the cpu preset's max_seq_len is 256
    assert result.exit_code == 0 and captured_train["config"].batch_tokens == 300 and captured_train["config"].max_seq_len == 256
    result = runner.invoke(app, ["train", "--preset", "cpu", "--lr", "-1", "--lora-r", "0"])
    assert result.exit_code == 1 and result.output.count("invalid configuration") == 1
    assert "lr:" in result.output and "lora_r:" in result.output
