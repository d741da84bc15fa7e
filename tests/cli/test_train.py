"""`qdtool train` on the command line: options map to config fields, errors are messages."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from qdtool.cli.app import app
from qdtool.config import TrainConfig

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data"
runner = CliRunner()


def test_every_config_field_is_an_option():
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for name in TrainConfig.model_fields:
        assert "--" + name.replace("_", "-") in result.output, name
    assert "--max-seq-length" in result.output  # the seed tool's flag still works


def test_train_a_tiny_model(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, [
        "train", "--model", str(tiny_model_dir), "--data", str(EXAMPLES / "sample_train.json"), "--output-dir", str(out),
        "--max-steps", "2", "--max-seq-length", "512", "--batch-tokens", "1024", "--lora-r", "4", "--lora-target", "q_proj,v_proj",
        "--no-packing", "--batch-size", "2", "--report-to", "none", "--eval-split", "0.2",
    ], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "training summary" in result.output and str(out / "adapter") in result.output
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and sorted(adapter["target_modules"]) == ["q_proj", "v_proj"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["samples"] for r in rows if "loss" in r] == [2, 2]  # --no-packing: batches of 2 samples


def test_bad_settings_fail_before_loading_anything(tmp_path):
    result = runner.invoke(app, ["train", "--lr", "-1", "--overlong", "maybe", "--output-dir", str(tmp_path / "x")])
    assert result.exit_code == 1
    assert "lr: Input should be greater than 0" in result.output
    assert "overlong: Input should be 'drop', 'truncate' or 'error'" in result.output
    assert not (tmp_path / "x").exists()


def test_missing_data_file_is_reported(tmp_path):
    result = runner.invoke(app, ["train", "--data", str(tmp_path / "none.jsonl"), "--output-dir", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "none.jsonl: no such file" in result.output
    assert not (tmp_path / "x").exists()


def test_max_steps_0_trains_by_epochs_even_over_a_yaml_value(tmp_path, captured_train):
    seen = captured_train
    (tmp_path / "c.yaml").write_text("# qdtool train --config c.yaml\nmax_steps: 7\nepochs: 2\n")
    runner.invoke(app, ["train", "--config", str(tmp_path / "c.yaml"), "--max-steps", "0"])
    assert seen["config"].max_steps is None and seen["config"].epochs == 2
    runner.invoke(app, ["train", "--config", str(tmp_path / "c.yaml")])
    assert seen["config"].max_steps == 7
