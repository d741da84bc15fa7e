"""`qdtool eval` on the command line."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from qdtool.cli.app import app

VAL = Path(__file__).resolve().parents[2] / "examples" / "data" / "strategyqa_val.jsonl"
runner = CliRunner()


def _predictions(tmp_path: Path, name: str, pick) -> Path:
    rows = [json.loads(line) for line in VAL.read_text().splitlines()]
    path = tmp_path / name
    path.write_text("".join(json.dumps({"id": r["id"], "question": r["question"], "sub_questions": pick(r)}) + "\n" for r in rows))
    return path


def test_scores_a_prediction_file_as_json(tmp_path):
    preds = _predictions(tmp_path, "q.jsonl", lambda r: [r["question"]])
    result = runner.invoke(app, ["eval", "--data", str(VAL), "--predictions", str(preds), "--json", "--output", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert round(report["metrics"]["sari"], 4) == 0.4428 and report["metrics"]["examples"] == 200
    assert (tmp_path / "out" / "per_example.jsonl").read_text().count("\n") == 200


def test_compare_gives_a_paired_interval(tmp_path):
    a = _predictions(tmp_path, "q.jsonl", lambda r: [r["question"]])
    b = _predictions(tmp_path, "first.jsonl", lambda r: r["sub_questions"][:1])
    result = runner.invoke(app, ["eval", "--data", str(VAL), "--compare", str(a), str(b), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    diff = out["sari_difference_vs_first"][1]
    assert diff["ci95"][0] < diff["mean"] < diff["ci95"][1]
    assert round(diff["mean"], 4) == round(0.7156 - 0.4428, 4)


def test_usage_errors(tmp_path):
    result = runner.invoke(app, ["eval", "--data", str(VAL)])
    assert result.exit_code == 2 and "pass --predictions FILE or --model SPEC" in result.output
    result = runner.invoke(app, ["eval", "--data", str(VAL), "--compare", "one"])
    assert result.exit_code == 2 and "at least two" in result.output
