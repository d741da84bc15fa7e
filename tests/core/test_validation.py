"""core/validation.py: one report over several files, --strict, leakage between files, token lengths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qdtool.core.validation import validate_data
from qdtool.errors import UsageError

GOOD = {"question": "Is Q big?", "sub_questions": ["What is Q?", "Is #1 big?"]}
ONE_STEP = {"question": "Is R small?", "sub_questions": ["How small is R?"]}  # a warning: only one step


def write(path: Path, *records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_a_clean_file_passes_with_its_statistics(tmp_path):
    report = validate_data([write(tmp_path / "a.jsonl", GOOD, {"question": "Is S red?", "sub_questions": ["What is S?", "Is #1 red?"]})])
    assert report.ok and report.errors == 0 and report.warnings == 0 and report.reason is None
    (file,) = report.files
    assert file.ok and not file.failed_by_strict and file.reason is None
    assert file.stats.records == 2 and file.stats.steps_histogram == {2: 2}
    assert file.stats.tokens is None  # no --model: no token lengths


def test_warnings_pass_unless_strict(tmp_path):
    path = write(tmp_path / "w.jsonl", GOOD, ONE_STEP)
    lenient = validate_data([path])
    assert lenient.ok and lenient.warnings == 1 and lenient.reason is None
    strict = validate_data([path], strict=True)
    assert not strict.ok and strict.errors == 0 and strict.failed_by_strict
    assert strict.reason == "1 warning(s) under --strict (warnings count as errors)"
    (file,) = strict.files
    assert not file.ok and file.failed_by_strict and file.reason == strict.reason


def test_errors_are_counted_over_every_file(tmp_path):
    good = write(tmp_path / "good.jsonl", GOOD)
    bad = write(tmp_path / "bad.jsonl", {"question": ""}, ONE_STEP)  # empty question and no sub_questions: 2 errors
    report = validate_data([good, bad])
    assert [f.ok for f in report.files] == [True, False]
    assert not report.ok and not report.failed_by_strict
    assert (report.errors, report.warnings) == (2, 1)
    assert report.reason == report.files[1].reason == "2 error(s)"
    strict = validate_data([good, bad], strict=True)
    assert not strict.failed_by_strict and not strict.files[1].failed_by_strict  # it has errors of its own
    assert strict.reason == "2 error(s), 1 warning(s) under --strict (warnings count as errors)"


def test_questions_also_in_an_against_file_are_leakage_errors(tmp_path):
    train = write(tmp_path / "train.jsonl", GOOD, ONE_STEP)
    val = write(tmp_path / "val.jsonl", {**GOOD, "question": "is q  BIG?"}, {"question": "New?", "sub_questions": ["a?", "b?"]})
    report = validate_data([train], against=[val])
    problems = [str(p) for p in report.files[0].result.errors]
    assert problems == [f"{train}:1: question: also in {val}:1 (train/eval leakage)"]  # matched after normalising case and spaces
    assert not report.ok
    # A file is never compared with itself, even when named both ways.
    assert validate_data([train, val], against=[val, train]).errors == 2  # one leak in each file


def test_a_missing_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="nothing.jsonl"):
        validate_data([tmp_path / "nothing.jsonl"])
    with pytest.raises(UsageError, match="gone.jsonl"):
        validate_data([write(tmp_path / "a.jsonl", GOOD)], against=[tmp_path / "gone.jsonl"])


def test_token_lengths_come_from_the_model_tokenizer(tmp_path, tiny_model_dir, tiny_tokenizer):
    from qdtool.core.data import load_records
    from qdtool.core.datastats import token_stats

    path = write(tmp_path / "a.jsonl", GOOD, ONE_STEP)
    report = validate_data([path], model=str(tiny_model_dir))
    tokens = report.files[0].stats.tokens
    assert tokens is not None and tokens.model == str(tiny_model_dir) and tokens.template == "plain"
    # validate-data keeps no records: its streamed statistics equal those of the records read whole
    assert tokens == token_stats(load_records(path).records, tiny_tokenizer, str(tiny_model_dir))


def test_the_json_report_has_every_field(tmp_path):
    path = write(tmp_path / "w.jsonl", GOOD, ONE_STEP)
    report = validate_data([path], strict=True).to_dict()
    assert {k: report[k] for k in ("valid", "strict", "reason", "errors", "warnings")} == {
        "valid": False, "strict": True, "reason": "1 warning(s) under --strict (warnings count as errors)", "errors": 0, "warnings": 1}
    (file,) = report["files"]
    assert file["path"] == str(path) and file["format"] == "jsonl" and file["records"] == 2
    assert (file["valid"], file["strict"], file["reason"]) == (False, True, report["reason"])
    assert file["errors"] == [] and [w["text"] for w in file["warnings"]] == [
        f"{path}:2: sub_questions: only one step; a decomposition usually has two or more"]
    assert file["stats"]["records"] == 2
    json.dumps(report)  # what --json prints
