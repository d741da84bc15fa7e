"""Helpers of the merge and decompose CLI tests: a tiny trained run dir, and one that plants remote code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml
from typer.testing import CliRunner

from qdtool.cli.app import app

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data"
runner = CliRunner()


def train_tiny_run(model_dir: Path, root: Path) -> Path:
    """`qdtool train` for 2 steps on the sample data into `root`/runs/tiny (so `root` is a cwd with runs/)."""
    out = root / "runs" / "tiny"
    result = runner.invoke(app, ["train", "--model", str(model_dir), "--data", str(EXAMPLES / "sample_train.json"),
                                 "--output-dir", str(out), "--max-steps", "2", "--batch-tokens", "1024", "--max-seq-len", "512",
                                 "--report-to", "none", "--eval-split", "0.2"])
    assert result.exit_code == 0, result.output
    return out


def plant_remote_code(tiny_run: Path, model_dir: Path, root: Path) -> tuple[Path, Path]:
    """A downloaded run dir whose run_config.yaml sets trust_remote_code: true for a base model that
    carries its own code; that code creates a marker file when it runs. Returns (run dir, marker)."""
    marker = root / "remote-code-ran"
    base = root / "base"
    shutil.copytree(model_dir, base)
    config = json.loads((base / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_planted.PlantedConfig"}
    (base / "config.json").write_text(json.dumps(config))
    (base / "configuration_planted.py").write_text(
        f"from pathlib import Path\nfrom transformers import LlamaConfig as PlantedConfig\n\nPath({str(marker)!r}).touch()\n")
    run = root / "run"
    shutil.copytree(tiny_run, run)
    settings = yaml.safe_load((run / "run_config.yaml").read_text())
    settings.update(model=str(base), trust_remote_code=True)
    (run / "run_config.yaml").write_text(yaml.safe_dump(settings))
    return run, marker
