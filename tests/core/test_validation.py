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


def test_validation_streams_a_file_instead_of_holding_it(tmp_path):
    """Traced Python memory at its peak stays a small share of the file: rows are read, checked, counted and
    dropped; what stays per record is a 16-byte digest of its question and its line (the duplicate check)."""
    import tracemalloc

    steps = ["What is the first thing about item {i} that " + "we need " * 90 + "?", "Is #1 about item {i} " + "long " * 180 + "?"]
    path = tmp_path / "big.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for i in range(1500):
            f.write(json.dumps({"question": f"Is item {i} big?", "sub_questions": [s.format(i=i) for s in steps]}) + "\n")
    size = path.stat().st_size
    validate_data([write(tmp_path / "warm.jsonl", GOOD)])  # the modules it imports on first use are not what is measured
    tracemalloc.start()
    try:
        report = validate_data([path])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert report.ok and report.files[0].result.records == 1500 and report.warnings == 0
    assert size > 2_500_000 and peak < size / 5, (size, peak)  # reading it whole would take more than the file


def test_problems_are_counted_in_full_and_listed_up_to_the_limit(tmp_path, monkeypatch):
    from qdtool.core import validation

    monkeypatch.setattr(validation, "MAX_LISTED_PROBLEMS", 3)
    train = write(tmp_path / "t.jsonl", *[{"question": f"Q{i}?"} for i in range(4)], GOOD)
    val = write(tmp_path / "v.jsonl", GOOD)
    report = validate_data([train], against=[val])
    (file,) = report.files
    assert (file.result.error_count, len(file.result.problems), file.result.not_listed) == (5, 3, 2)  # 4 missing steps + 1 leak
    assert report.errors == 5 and file.reason == "5 error(s)" and file.to_dict()["problems_not_listed"] == 2
    assert [p.message for p in file.result.problems] == ["missing"] * 3


def test_a_table_against_a_jsonl_file_finds_the_same_question(tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("q,steps\nIS Q  big?,\"What is Q?\nIs #1 big?\"\nNew?,1. a? 2. #1 b?\n", encoding="utf-8")
    val = write(tmp_path / "val.jsonl", {"question": "New one?", "sub_questions": ["a?", "b?"]}, GOOD)
    from qdtool.core.data import Fields

    report = validate_data([train], against=[val], fields=Fields("q", "steps"))
    assert [str(p) for p in report.files[0].result.problems] == [f"{train}:2: question: also in {val}:2 (train/eval leakage)"]
    assert report.files[0].result.records == 2 and report.files[0].stats.steps_histogram == {2: 2}
