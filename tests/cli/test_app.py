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
    assert names == ["decompose", "eval", "export", "merge", "probe-gpu", "serve", "synth", "train", "validate-data"]


def test_version_and_help():
    runner = CliRunner()
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"qdtool {__version__}"
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "validate-data" in result.output


def test_help_does_not_import_the_heavy_stack():
    code = ("import sys; from qdtool.cli.app import app; "
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'datasets') if m in sys.modules))")
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


def _run_with_fault(env_extra: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    """`qdtool validate-data` as the console script runs it, with a bug injected into core."""
    data = tmp_path / "d.jsonl"
    data.write_text('{"question": "q?", "sub_questions": ["a?", "b?"]}\n', encoding="utf-8")
    code = (
        "import sys, qdtool.core.validation as v\n"
        "def broken(*a, **k): raise RuntimeError('injected fault')\n"
        "v.validate_data = broken\n"
        "from qdtool.cli.app import main\n"
        f"sys.argv = ['qdtool', 'validate-data', {str(data)!r}]\n"
        "main()\n"
    )
    import os

    env = {k: v for k, v in os.environ.items() if k != "QDTOOL_DEBUG"} | env_extra
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)


def test_a_bug_exits_3_with_one_line_and_a_debug_hint(tmp_path):
    result = _run_with_fault({}, tmp_path)
    assert result.returncode == 3, result.stderr
    assert "internal error: RuntimeError: injected fault" in result.stderr
    assert "QDTOOL_DEBUG=1" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bug_shows_the_traceback_with_qdtool_debug(tmp_path):
    result = _run_with_fault({"QDTOOL_DEBUG": "1"}, tmp_path)
    assert result.returncode not in (0, 3)
    assert "Traceback" in result.stderr and "injected fault" in result.stderr


def test_flags_show_no_value_in_help():
    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "--overwrite" in result.output and "--no-packing" in result.output
    assert "<bool>" not in result.output
    assert "<int>" in result.output  # options that take a value still show its type


def test_logs_keep_whole_paths_and_lines(tmp_path):
    deep = tmp_path / ("a-rather-long-directory-name-" * 4) / "and-a-long-file-name-for-the-records.jsonl"
    deep.parent.mkdir(parents=True)
    deep.write_text('{"question": "Is the sky blue?", "sub_questions": ["What colour is the sky?"]}\n', encoding="utf-8")
    result = CliRunner().invoke(app, ["validate-data", str(deep)], env={"COLUMNS": ""})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(str(deep) in line for line in lines), result.output  # one line, not cut at 80 columns
    assert not any(line.endswith("…") for line in lines)
