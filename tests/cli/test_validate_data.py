"""`qdtool validate-data`: exit codes, messages, JSON report, and no traceback for any input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qdtool.cli.app import app

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data"
GOOD = {"question": "Is Q big?", "sub_questions": ["What is Q?", "Is #1 big?"]}
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, ["validate-data", *args])


def write(path: Path, *records) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records), encoding="utf-8")
    return path


def test_every_example_file_is_valid():
    files = sorted(str(p) for p in EXAMPLES.iterdir() if p.suffix in (".json", ".jsonl"))
    names = {Path(f).name for f in files}
    assert {"strategyqa_train.jsonl", "strategyqa_val.jsonl", "ko_samples.jsonl", "sample_train.json"} <= names
    result = invoke(*files)
    assert result.exit_code == 0, result.output
    assert "all valid" in result.output


def test_bundled_train_and_val_do_not_leak():
    result = invoke(str(EXAMPLES / "strategyqa_train.jsonl"), "--against", str(EXAMPLES / "strategyqa_val.jsonl"))
    assert result.exit_code == 0, result.output
    assert "leakage" not in result.output


def test_korean_samples_are_korean_with_2_to_5_steps():
    from qdtool.core.data import load_records

    records = load_records(EXAMPLES / "ko_samples.jsonl").records
    assert len(records) >= 30
    assert all(2 <= len(r.sub_questions) <= 5 for r in records)
    result = invoke(str(EXAMPLES / "ko_samples.jsonl"), "--json")
    assert json.loads(result.stdout)["files"][0]["stats"]["korean_records"] == len(records)


def test_valid_file_prints_stats_and_exits_0(tmp_path):
    korean = {"question": "세종은 누구인가?", "sub_questions": ["세종은 언제 태어났는가?", "#1에 무슨 일이 있었는가?"]}
    result = invoke(str(write(tmp_path / "ok.jsonl", GOOD, korean)))
    assert result.exit_code == 0, result.output
    assert "✓ valid: 2 records" in result.output
    assert "steps per question" in result.output and "Hangul" in result.output


def test_broken_file_lists_every_error_with_line_and_exits_1(tmp_path):
    path = write(tmp_path / "bad.jsonl", GOOD, '{"question": "x", "sub_questions": "y"}', "not json",
                 {"question": "", "sub_questions": ["a?", "b?"]})
    result = invoke(str(path))
    assert result.exit_code == 1
    assert f"{path}:2: sub_questions: must be a non-empty list of strings (got str)" in result.output
    assert f"{path}:3:1: invalid JSON: Expecting value" in result.output
    assert f"{path}:4: question: must not be empty" in result.output
    assert "✗ invalid: 3 error(s)" in result.output
    assert "Traceback" not in result.output


def test_missing_file_is_a_usage_error(tmp_path):
    result = invoke(str(tmp_path / "nope.jsonl"))
    assert result.exit_code == 2
    assert "no such file" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_warnings_pass_unless_strict(tmp_path):
    path = write(tmp_path / "w.jsonl", GOOD, GOOD)
    result = invoke(str(path))
    assert result.exit_code == 0 and "✓ valid: 2 records, 1 warning(s)" in result.output
    result = invoke(str(path), "--strict")
    assert result.exit_code == 1
    assert "duplicate of the question at" in result.output
    # The verdict must agree with the exit code: no "✓ valid" on a run that fails.
    assert "✓ valid" not in result.output
    assert "✗ failed under --strict: 1 warning(s), counted as errors; fix them, or drop --strict to accept warnings" in result.output


def test_strict_json_says_invalid_and_why(tmp_path):
    path = write(tmp_path / "w.jsonl", GOOD, GOOD)
    loose = json.loads(invoke(str(path), "--json").stdout)
    assert (loose["valid"], loose["strict"], loose["reason"]) == (True, False, None)
    result = invoke(str(path), "--strict", "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert (report["valid"], report["strict"], report["errors"], report["warnings"]) == (False, True, 0, 1)
    assert report["reason"] == "1 warning(s) under --strict (warnings count as errors)"
    assert report["files"][0]["valid"] is False and report["files"][0]["reason"] == report["reason"]


def test_strict_over_several_files_names_the_failing_one(tmp_path):
    warned = write(tmp_path / "w.jsonl", GOOD, GOOD)
    clean = write(tmp_path / "c.jsonl", GOOD)
    result = invoke(str(clean), str(warned), "--strict")
    assert result.exit_code == 1
    assert "✓ valid: 1 records, 0 warning(s)" in result.output  # c.jsonl passes even under --strict
    assert "failed under --strict: 2 files, 0 error(s), 1 warning(s)" in result.output
    report = json.loads(invoke(str(clean), str(warned), "--strict", "--json").stdout)
    assert [f["valid"] for f in report["files"]] == [True, False] and report["valid"] is False
    broken = write(tmp_path / "b.jsonl", GOOD, GOOD, {"question": "Q?"})
    report = json.loads(invoke(str(broken), "--strict", "--json").stdout)
    assert report["reason"] == "1 error(s), 1 warning(s) under --strict (warnings count as errors)"


def test_against_reports_leakage(tmp_path):
    train = write(tmp_path / "train.jsonl", GOOD)
    val = write(tmp_path / "val.jsonl", GOOD)
    result = invoke(str(train), "--against", str(val))
    assert result.exit_code == 1
    assert f"{train}:1: question: also in {val}:1 (train/eval leakage)" in result.output


def test_json_report(tmp_path):
    path = write(tmp_path / "x.jsonl", GOOD, {"question": "Q?"})
    result = invoke(str(path), "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["valid"] is False and report["errors"] == 1
    file_report = report["files"][0]
    assert file_report["records"] == 1
    assert file_report["errors"][0]["text"] == f"{path}:2: sub_questions: missing"
    assert file_report["errors"][0]["line"] == 2
    assert file_report["stats"]["steps_histogram"] == {"2": 1}


def test_token_lengths_with_a_local_model(tiny_model_dir, tmp_path):
    path = write(tmp_path / "ok.jsonl", GOOD)
    result = invoke(str(path), "--model", str(tiny_model_dir), "--json")
    assert result.exit_code == 0, result.output
    tokens = json.loads(result.stdout)["files"][0]["stats"]["tokens"]
    assert tokens["template"] == "plain" and tokens["max"] == tokens["p50"] > tokens["mean_answer"] > 0


def test_unknown_model_is_a_clear_error(tmp_path):
    result = invoke(str(write(tmp_path / "ok.jsonl", GOOD)), "--model", "no-such-model")
    assert result.exit_code == 1
    assert "unknown model 'no-such-model'" in result.output


@pytest.mark.embedded
def test_token_lengths_with_the_embedded_model(use_embedded_cache):
    result = invoke(str(EXAMPLES / "sample_train.json"), "--model", "embedded", "--json")
    assert result.exit_code == 0, result.output
    tokens = json.loads(result.stdout)["files"][0]["stats"]["tokens"]
    assert 40 < tokens["p50"] < 200 and tokens["template"] == "plain"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'{"question": "Q?", "sub_questionz\\udc00": ["a?", "b?"]}\n',
         "bad.jsonl:1: a key has the escape \\udc00, a lone UTF-16 surrogate"),
        (b'{"question": "Is Q\\ud800 big?", "sub_questions": ["What is Q?", "Is #1 big?"]}\n',
         "bad.jsonl:1: question: the escape \\ud800 is a lone UTF-16 surrogate"),
        (b"[" * 1500 + b"]" * 1500 + b"\n", "bad.jsonl:1: JSON nested too deeply"),
        (b'{"question": "Q?", "sub_questions": ["a?", "b?"], "n": ' + b"9" * 5000 + b"}\n",
         "bad.jsonl:1:56: integer with 5,000 digits (the limit is 4,300)"),
    ],
    ids=["surrogate key", "surrogate value", "deep", "huge integer"],
)
def test_hostile_json_is_invalid_with_a_message_in_text_and_json(tmp_path, monkeypatch, content, expected):
    monkeypatch.chdir(tmp_path)
    Path("bad.jsonl").write_bytes(content)
    result = invoke("bad.jsonl")
    assert result.exit_code == 1, result.output
    assert expected in result.output and "✗ invalid: 1 error(s)" in result.output
    result = invoke("bad.jsonl", "--json")
    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout)["files"][0]["errors"][0]["text"].startswith(expected)


def test_utf16_gets_one_error(tmp_path):
    path = tmp_path / "u16.jsonl"
    path.write_bytes(json.dumps(GOOD).encode("utf-16") + "\n".encode("utf-16-le"))
    result = invoke(str(path))
    assert result.exit_code == 1
    assert f"{path}: file is UTF-16 (it starts with a UTF-16 byte-order mark); save it as UTF-8" in result.output
    assert "✗ invalid: 1 error(s)" in result.output


def test_a_pretty_printed_array_in_a_jsonl_file_gets_one_hint(tmp_path):
    path = tmp_path / "arr.jsonl"
    path.write_text(json.dumps([GOOD] * 3, indent=2))
    result = invoke(str(path))
    assert result.exit_code == 1
    assert "✗ invalid: 1 error(s)" in result.output
    assert "the file holds a JSON array over 23 lines, but a .jsonl file has one record per line; rename the file to .json" in result.output
    renamed = path.rename(tmp_path / "arr.json")
    assert invoke(str(renamed)).exit_code == 0  # the hint's fix works


def test_a_fifo_is_a_usage_error_not_a_hang(tmp_path):
    import os
    import threading
    import time

    pipe = tmp_path / "pipe.jsonl"
    os.mkfifo(pipe)

    def unblock() -> None:  # if validate-data waits on the FIFO (the bug), end the wait so the test fails, not hangs
        time.sleep(5)
        with open(pipe, "wb"):
            pass

    threading.Thread(target=unblock, daemon=True).start()
    result = invoke(str(pipe))
    assert result.exit_code == 2, result.output
    assert f"{pipe}: is a named pipe (FIFO), not a regular file; save the data to a file and pass that" in result.output


def test_a_csv_is_a_table_not_invalid_json(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text('q,decomp\nIs Q big?,"1. What is Q? 2. Is #1 big?"\n,What?\n', encoding="utf-8")
    result = invoke(str(path))
    assert result.exit_code == 1 and "invalid JSON" not in result.output
    assert f'{path}: no "question" column; columns found: q, decomp; map them with --question-field q --steps-field decomp' in result.output
    result = invoke(str(path), "--question-field", "q", "--steps-field", "decomp", "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)["files"][0]
    assert (report["format"], report["records"], report["stats"]["steps_histogram"]) == ("csv", 1, {"2": 1})
    assert [e["text"] for e in report["errors"]] == [f"{path}:3: q: must not be empty"] and report["errors"][0]["line"] == 3


def test_tsv_parquet_and_a_saved_dataset_validate(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    tsv = tmp_path / "x.tsv"
    tsv.write_text(f"question\tsub_questions\n{GOOD['question']}\t{json.dumps(GOOD['sub_questions'])}\n", encoding="utf-8")
    pq.write_table(pa.table({"question": [GOOD["question"], "Is R red?"], "sub_questions": [GOOD["sub_questions"], ["What is R?"]]}),
                   tmp_path / "x.parquet")
    Dataset.from_dict({"question": [GOOD["question"]], "sub_questions": [GOOD["sub_questions"]]}).save_to_disk(str(tmp_path / "saved"))
    result = invoke(str(tsv), str(tmp_path / "x.parquet"), str(tmp_path / "saved"))
    assert result.exit_code == 0, result.output
    assert f"{tsv} (tsv, 1 usable records)" in result.output and "saved (dataset, 1 usable records)" in result.output
    assert f"{tmp_path / 'x.parquet'}[#1]: sub_questions: only one step" in result.output
    assert "all valid: 3 files, 0 error(s), 1 warning(s)" in result.output


def test_a_long_list_of_problems_is_cut_and_says_how_many_more(tmp_path, monkeypatch):
    from qdtool.core import validation

    monkeypatch.setattr(validation, "MAX_LISTED_PROBLEMS", 2)
    path = write(tmp_path / "bad.jsonl", *[{"question": f"Q{i}?"} for i in range(5)])
    result = invoke(str(path))
    assert result.exit_code == 1
    assert "... and 3 more problem(s), counted but not listed (the first 2 are)" in result.output
    assert "✗ invalid: 5 error(s), 0 warning(s)" in result.output
