"""`qdtool merge` and `qdtool decompose` on the command line; end to end on the embedded model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qdtool.cli.app import app

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data"
runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cwd")
    out = root / "runs" / "tiny"
    result = runner.invoke(app, ["train", "--model", str(tiny_model_dir), "--data", str(EXAMPLES / "sample_train.json"),
                                 "--output-dir", str(out), "--max-steps", "2", "--batch-tokens", "1024", "--max-seq-len", "512",
                                 "--report-to", "none", "--eval-split", "0.2"])
    assert result.exit_code == 0, result.output
    return out


def test_merge_then_decompose_a_file(tiny_run, tmp_path):
    merged = tmp_path / "merged"
    result = runner.invoke(app, ["merge", str(tiny_run), "--output", str(merged), "--dtype", "fp32"])
    assert result.exit_code == 0, result.output
    assert "✓ merged into" in result.output and "logits match base + adapter" in result.output
    again = runner.invoke(app, ["merge", str(tiny_run), "--output", str(merged)])
    assert again.exit_code == 2 and "pass --overwrite" in again.output

    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"id": i, "question": f"Question number {i}?"}) + "\n" for i in range(5)))
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["decompose", "--model", str(merged), "--input", str(questions), "--output", str(out),
                                 "--format", "jsonl", "--max-new-tokens", "8", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == list(range(5))
    assert all({"question", "sub_questions", "raw", "parse_ok"} <= set(r) for r in rows)
    printed = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert printed == rows


def test_decompose_defaults_to_the_latest_run_and_reads_stdin(tiny_run, monkeypatch):
    monkeypatch.chdir(tiny_run.parent.parent)
    result = runner.invoke(app, ["decompose", "--input", "-", "--format", "json", "--max-new-tokens", "4"], input="A question?\nAnother one?\n")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout[result.stdout.index("["):])
    assert [r["question"] for r in rows] == ["A question?", "Another one?"]


def test_decompose_usage_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["decompose", "A question?"])
    assert result.exit_code == 2 and "no run in runs/" in result.output
    result = runner.invoke(app, ["decompose"])
    assert result.exit_code == 2 and "pass one QUESTION or --input" in result.output
    result = runner.invoke(app, ["decompose", "Q?", "--num-return-sequences", "3", "--model", "embedded"])
    assert result.exit_code == 2 and "needs sampling" in result.output


@pytest.mark.embedded
def test_end_to_end_on_the_embedded_model(use_embedded_cache, tmp_path):
    """train a few steps → merge → decompose a file of 10 questions, on the real Gemma 3 270M."""
    run = tmp_path / "runs" / "e2e"
    result = runner.invoke(app, ["train", "--data", str(EXAMPLES / "strategyqa_train.jsonl"), "--output-dir", str(run),
                                 "--max-steps", "2", "--batch-tokens", "512", "--max-seq-len", "256", "--eval-max-records", "8",
                                 "--report-to", "none", "--lr", "5e-4"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["merge", str(run), "--dtype", "fp32"])
    assert result.exit_code == 0, result.output
    assert (run / "merged" / "model.safetensors").is_file()
    val = [json.loads(line) for line in (EXAMPLES / "strategyqa_val.jsonl").read_text().splitlines()[:10]]
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"id": r["id"], "question": r["question"]}) + "\n" for r in val))
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["decompose", "--model", str(run / "merged"), "--input", str(questions), "--output", str(out),
                                 "--format", "jsonl", "--max-new-tokens", "48"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [r["id"] for r in val]
    assert sum(r["parse_ok"] for r in rows) >= 5  # a base model after 2 steps already follows the numbered format
