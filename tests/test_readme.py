"""README.md says what the tool does: its example outputs, flags and default config are the real ones.

The commands themselves run in CI exactly as written (scripts/check_readme.py), and
tests/test_deploy.py checks that every command and flag they name exists; these checks are the
rest of the cheap half that every test run makes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from qdtool.cli.app import app
from qdtool.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
runner = CliRunner()


def _shown_output(command: str) -> list[str]:
    """The lines the README shows after `$ COMMAND` in a fenced block."""
    block = README.split(f"$ {command}\n", 1)[1].split("```", 1)[0]
    return [line.rstrip() for line in block.splitlines() if line.strip()]


def _real_output(*args: str) -> list[str]:
    result = runner.invoke(app, list(args), env={"COLUMNS": ""})
    return [line.rstrip() for line in result.output.splitlines() if line.strip()]


def test_the_broken_file_example_is_shipped_and_its_output_is_real(monkeypatch):
    monkeypatch.chdir(REPO)
    assert (REPO / "examples" / "bad.jsonl").is_file()
    shown = _shown_output("qdtool validate-data examples/bad.jsonl")
    real = _real_output("validate-data", "examples/bad.jsonl")
    assert shown == real


def test_default_yaml_spells_out_the_real_defaults():
    path = REPO / "configs" / "default.yaml"
    values = yaml.safe_load(path.read_text(encoding="utf-8"))
    defaults = TrainConfig()
    wrong = {k: (v, getattr(defaults, k)) for k, v in values.items() if getattr(defaults, k) != v}
    assert wrong == {}
    comment = path.read_text(encoding="utf-8").splitlines()[1]
    assert "fp32 on CPU)" not in comment  # precision auto is bf16 on CPUs that have it


@pytest.mark.parametrize("name", ["questions.jsonl", "questions.txt"])
def test_the_decompose_examples_are_shipped(name):
    assert (REPO / "examples" / name).read_text(encoding="utf-8").count("\n") >= 3
