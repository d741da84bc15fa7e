"""`qdtool eval` on the command line."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
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


def _never(*args, **kwargs):
    raise AssertionError("scoring or generation started before the output directory was checked")


def test_a_read_only_output_stops_before_generation(tmp_path, monkeypatch):
    # Tests run as root, where chmod blocks nothing: make the file system refuse instead.
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("qdtool.core.files.tempfile.mkstemp", read_only)
    monkeypatch.setattr("qdtool.core.evaluation.predict", _never)
    result = runner.invoke(app, ["eval", "--data", str(VAL), "--model", "embedded", "--output", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert f"cannot write {tmp_path / 'out'}: the file system is read-only; choose an output on a writable disk" in result.output
    assert "Traceback" not in result.output


def test_an_output_under_a_file_stops_before_scoring(tmp_path, monkeypatch):
    preds = _predictions(tmp_path, "q.jsonl", lambda r: [r["question"]])
    (tmp_path / "file").write_text("x")
    monkeypatch.setattr("qdtool.core.evaluation.evaluate", _never)
    result = runner.invoke(app, ["eval", "--data", str(VAL), "--predictions", str(preds), "--output", str(tmp_path / "file" / "out")])
    assert result.exit_code == 2, result.output
    assert f"cannot write {tmp_path / 'file' / 'out'}" in result.output


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "q.jsonl: file is empty; expected JSON predictions"),
        (b'{"id": "x", "question": "q?", "sub_questions": ["a?", {"b": 1}]}\n', "q.jsonl:1: sub_questions: step 2 must be a string (got object)"),
        ('{"question": "café?"}\n'.encode("latin-1"), "q.jsonl:1: not valid UTF-8 (byte 0xe9 at column 18); save the file as UTF-8"),
        (b'{"id": 1, "question": "q?"}\n{"id": 1, "question": "r?"}\n', 'q.jsonl:2: id: 1 repeats the id of q.jsonl:1'),
        (b"[" * 2000 + b"]" * 2000 + b"\n", "q.jsonl:1: JSON nested too deeply"),
    ],
    ids=["empty", "non-string step", "latin-1", "duplicate id", "deep"],
)
def test_broken_predictions_are_located_errors(tmp_path, monkeypatch, content, expected):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "q.jsonl").write_bytes(content)
    result = runner.invoke(app, ["eval", "--data", str(VAL), "--predictions", "q.jsonl"])
    assert result.exit_code == 1, result.output
    assert expected in result.output
    assert "no prediction matched" not in result.output and "Traceback" not in result.output
