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
        (b'{"id": "x", "question": "q?", "sub_questions": ["a?", {"b": 1}]}\n',
         "q.jsonl:1: sub_questions: step 2 must be a string (got object)"),
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


def _first_ids(n: int) -> list[str]:
    return [json.loads(line)["id"] for line in VAL.read_text().splitlines()[:n]]


def test_limit_scores_the_first_references_of_a_prediction_file(tmp_path):
    from qdtool.core.evaluation import evaluate, read_predictions

    preds = _predictions(tmp_path, "q.jsonl", lambda r: r["sub_questions"][:1])
    result = runner.invoke(app, ["eval", "--data", str(VAL), "--predictions", str(preds), "--limit", "8", "--json",
                                 "--output", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["limit"] == {"first": 8, "of": 200} and report["metrics"]["examples"] == 8
    # the 192 predictions past the limit are set aside, not "prediction(s) without a reference"
    assert report["unmatched_predictions"] == [] and report["unmatched_references"] == []
    assert "without a reference" not in result.output
    refs = [json.loads(line) for line in VAL.read_text().splitlines()[:8]]
    assert report["metrics"]["sari"] == pytest.approx(evaluate(refs, read_predictions(preds), "x").metrics["sari"])
    scored = [json.loads(line)["id"] for line in (tmp_path / "out" / "per_example.jsonl").read_text().splitlines()]
    assert scored == _first_ids(8)
    assert json.loads((tmp_path / "out" / "report.json").read_text())["limit"] == {"first": 8, "of": 200}


def test_limit_needs_predictions_for_the_first_references_only(tmp_path):
    rows = [json.loads(line) for line in VAL.read_text().splitlines()[:5]]
    preds = tmp_path / "five.jsonl"
    preds.write_text("".join(json.dumps({"id": r["id"], "question": r["question"], "sub_questions": [r["question"]]}) + "\n" for r in rows))
    result = runner.invoke(app, ["eval", "--data", str(VAL), "--predictions", str(preds), "--limit", "5"])
    assert result.exit_code == 0, result.output
    assert "--limit: scored the first 5 of 200 references" in result.output and "5 examples" in result.output
    assert "warning" not in result.output
    # without --limit the same file leaves 195 references unscored, and says so
    result = runner.invoke(app, ["eval", "--data", str(VAL), "--predictions", str(preds)])
    assert "195 reference(s) without a prediction" in result.output and "--limit" not in result.output


def test_limit_with_a_model_decomposes_only_the_first_questions(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["eval", "--data", str(VAL), "--model", str(tiny_model_dir), "--limit", "3", "--max-new-tokens", "4",
                                 "--output", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["limit"] == {"first": 3, "of": 200}
    assert [json.loads(line)["id"] for line in (out / "predictions.jsonl").read_text().splitlines()] == _first_ids(3)


def test_limit_applies_to_every_compared_source(tmp_path):
    a = _predictions(tmp_path, "q.jsonl", lambda r: [r["question"]])
    b = _predictions(tmp_path, "first.jsonl", lambda r: r["sub_questions"][:1])
    result = runner.invoke(app, ["eval", "--data", str(VAL), "--compare", str(a), str(b), "--limit", "20", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["limit"] == {"first": 20, "of": 200}
    assert [(r["limit"], r["metrics"]["examples"]) for r in out["reports"]] == [({"first": 20, "of": 200}, 20)] * 2
    assert out["sari_difference_vs_first"][1] is not None


def test_limit_must_be_positive():
    result = runner.invoke(app, ["eval", "--data", str(VAL), "--predictions", str(VAL), "--limit", "0"])
    assert result.exit_code == 2 and "Invalid value for '--limit'" in result.output


@pytest.fixture
def decoding_settings(monkeypatch) -> list:
    """The GenerationSettings each `eval --model` call decodes with, in call order; the gold steps stand in as predictions."""
    seen = []

    def predict(references, source, settings, shots, shots_from, progress=None, limit=None, shots_fields=None):
        seen.append(settings)
        return [{"id": r["id"], "question": r["question"], "sub_questions": r["sub_questions"]} for r in references[:limit]]

    monkeypatch.setattr("qdtool.core.evaluation.predict", predict)
    return seen


def test_the_decoding_guard_options_reach_the_generation_settings(decoding_settings):
    from qdtool.core.generation import GenerationSettings

    seen = decoding_settings
    args = ["eval", "--data", str(VAL), "--model", "embedded", "--limit", "2", "--json"]
    result = runner.invoke(app, [*args, "--max-sub-questions", "0", "--keep-repeats", "--no-repeat-ngram-size", "3",
                                 "--repetition-penalty", "1.1"])
    assert result.exit_code == 0, result.output
    assert seen[0] == GenerationSettings(max_new_tokens=160, max_sub_questions=0, stop_at_repeat=False, no_repeat_ngram_size=3,
                                         repetition_penalty=1.1, seed=0)
    assert runner.invoke(app, args).exit_code == 0
    assert seen[1] == GenerationSettings(max_new_tokens=160, seed=0)  # decompose's guard defaults; greedy, so the seed is unused


def test_shots_from_is_read_with_the_field_names_given_for_data(tmp_path, monkeypatch):
    import csv

    rows = [json.loads(line) for line in VAL.read_text().splitlines()][:10]
    for name in ("refs.csv", "shots.csv"):
        with open(tmp_path / name, "w", newline="") as f:
            csv.writer(f).writerows([["q", "decomp"], *([r["question"], "\n".join(r["sub_questions"])] for r in rows)])
    asked = []

    def predict(references, source, settings, shots, shots_from, progress=None, limit=None, shots_fields=None):
        from qdtool.core.evaluation import few_shot_examples

        asked.append(few_shot_examples(shots, shots_from, exclude=set(), fields=shots_fields))
        return [{"question": r["question"], "sub_questions": r["sub_questions"]} for r in references[:limit]]

    monkeypatch.setattr("qdtool.core.evaluation.predict", predict)
    args = ["eval", "--data", str(tmp_path / "refs.csv"), "--model", "embedded", "--shots", "2"]
    result = runner.invoke(app, [*args, "--shots-from", str(tmp_path / "shots.csv"), "--question-field", "q", "--steps-field", "decomp"])
    assert result.exit_code == 0, result.output
    assert len(asked[0]) == 2 and {q for q, _ in asked[0]} <= {r["question"] for r in rows}
    assert all(steps == next(r["sub_questions"] for r in rows if r["question"] == q) for q, steps in asked[0])


def test_references_from_parquet_with_mapped_columns_score_as_the_jsonl(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in VAL.read_text().splitlines()]
    pq.write_table(pa.table({"id": [r["id"] for r in rows], "q": [r["question"] for r in rows],
                             "decomp": ["\n".join(r["sub_questions"]) for r in rows]}), tmp_path / "val.parquet")
    preds = _predictions(tmp_path, "q.jsonl", lambda r: [r["question"]])
    result = runner.invoke(app, ["eval", "--data", str(tmp_path / "val.parquet"), "--question-field", "q", "--steps-field", "decomp",
                                 "--predictions", str(preds), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert round(report["metrics"]["sari"], 4) == 0.4428 and report["metrics"]["examples"] == 200  # as from the JSONL file
    result = runner.invoke(app, ["eval", "--data", str(tmp_path / "val.parquet"), "--predictions", str(preds)])
    assert result.exit_code == 1
    assert 'no "question" column; columns found: id, q, decomp; map them with --question-field q --steps-field decomp' in result.output


def test_consensus_samples_at_0_7_seeded_and_refuses_what_cannot_sample(decoding_settings):
    from qdtool.core.generation import GenerationSettings

    seen = decoding_settings
    args = ["eval", "--data", str(VAL), "--model", "embedded", "--limit", "2", "--json"]
    assert runner.invoke(app, [*args, "--consensus", "5"]).exit_code == 0
    assert seen[0] == GenerationSettings(max_new_tokens=160, temperature=0.7, num_return_sequences=5, consensus=True, seed=0)
    assert runner.invoke(app, [*args, "--consensus", "3", "--temperature", "1.0", "--seed", "4"]).exit_code == 0
    assert seen[1] == GenerationSettings(max_new_tokens=160, temperature=1.0, num_return_sequences=3, consensus=True, seed=4)
    assert runner.invoke(app, [*args, "--temperature", "0.5"]).exit_code == 0  # one sample, seeded
    assert seen[2] == GenerationSettings(max_new_tokens=160, temperature=0.5, seed=0)
    for flags, message in ((["--consensus", "1"], "two or more samples"), (["--consensus", "5", "--temperature", "0"], "needs sampling")):
        result = runner.invoke(app, [*args, *flags])
        assert result.exit_code == 2 and message in result.output, result.output
    assert len(seen) == 3
