"""The command set, --help/--version, and the layering rule (core never imports typer or rich)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from qdtool import __version__
from qdtool.cli.app import app

SRC = Path(__file__).resolve().parents[2] / "src" / "qdtool"


def test_registered_commands_are_exactly_the_working_ones():
    names = sorted(cmd.name for cmd in app.registered_commands)
    assert names == ["decompose", "eval", "merge", "probe-gpu", "train", "validate-data"]


def test_version_and_help():
    runner = CliRunner()
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"qdtool {__version__}"
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "validate-data" in result.output


def test_help_does_not_import_the_heavy_stack():
    code = "import sys; from qdtool.cli.app import app; print(sorted(m for m in ('torch', 'transformers', 'peft', 'datasets') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_core_never_imports_typer_or_rich():
    offenders = []
    for path in sorted((SRC / "core").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in ("typer", "rich") or n.startswith("qdtool.cli")]
    assert offenders == []
