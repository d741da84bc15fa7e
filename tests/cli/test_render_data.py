"""cli/render_data.py: what validate-data prints for a report (problems, statistics, the verdict)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from rich.console import Console

from qdtool.cli.render_data import render_report
from qdtool.core.datastats import TokenStats
from qdtool.core.validation import validate_data

TWO = {"question": "Is Q big?", "sub_questions": ["What is Q?", "Is #1 big?"]}
THREE = {"question": "Is R red?", "sub_questions": ["What is R?", "What colour is #1?", "Is #2 red?"]}
ONE = {"question": "Is S small?", "sub_questions": ["How small is S?"]}  # a warning: one step


def write(path: Path, *records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def rendered(report, squeeze: bool = True) -> list[str]:
    """The lines printed; `squeeze`: a table's column gap shown as two spaces whatever its width."""
    console = Console(record=True, width=200, color_system=None)
    render_report(console, report)
    lines = [line.rstrip() for line in console.export_text().splitlines()]
    return [re.sub(r"(?<=\S) {2,}", "  ", line) for line in lines] if squeeze else lines


def test_a_valid_file_shows_its_statistics_and_a_histogram(tmp_path):
    path = write(tmp_path / "a.jsonl", TWO, TWO | {"question": "Is P big?"}, THREE)
    lines = rendered(validate_data([path]))
    assert lines[0] == f"{path} (jsonl, 3 usable records)"
    assert "  records  3" in lines
    assert "    2 steps  " + "█" * 24 + " 2" in lines  # the commonest count fills the bar
    assert "    3 steps  " + "█" * 12 + " 1" in lines
    assert "  steps per question  min 2 · mean 2.3 · p95 3 · max 3" in lines
    assert lines[-2:] == ["✓ valid: 3 records, 0 warning(s)", ""]
    assert not any("tokens / sample" in line for line in lines)  # no --model


def test_problems_are_listed_before_an_invalid_verdict(tmp_path):
    path = write(tmp_path / "bad.jsonl", TWO, {"question": ""}, ONE)
    lines = rendered(validate_data([path]), squeeze=False)
    assert lines[1:4] == [  # the labels padded alike, so the problems line up
        f"  error   {path}:2: question: must not be empty",
        f"  error   {path}:2: sub_questions: missing",
        f"  warning {path}:3: sub_questions: only one step; a decomposition usually has two or more",
    ]
    assert "✗ invalid: 2 error(s), 1 warning(s)" in lines
    assert "    1 step  " + "█" * 24 + " 1" in rendered(validate_data([path]))  # the usable records' steps; "1 step", not "1 steps"


def test_strict_says_the_warnings_failed_it(tmp_path):
    path = write(tmp_path / "w.jsonl", TWO, ONE)
    lines = rendered(validate_data([path], strict=True))
    assert "✗ failed under --strict: 1 warning(s), counted as errors; fix them, or drop --strict to accept warnings" in lines
    assert "✓ valid: 2 records, 1 warning(s)" in rendered(validate_data([path]))


def test_several_files_end_with_one_summary(tmp_path):
    good, warned = write(tmp_path / "a.jsonl", TWO), write(tmp_path / "w.jsonl", TWO, ONE)
    assert rendered(validate_data([good, warned]))[-1] == "all valid: 2 files, 0 error(s), 1 warning(s)"
    assert rendered(validate_data([good, warned], strict=True))[-1] == (
        "failed under --strict: 2 files, 0 error(s), 1 warning(s), counted as errors; fix them, or drop --strict to accept warnings")
    bad = write(tmp_path / "bad.jsonl", {"question": "Q?"})
    assert rendered(validate_data([good, bad]))[-1] == "invalid: 2 files, 1 error(s), 0 warning(s)"
    assert not any(line.startswith(("all valid", "invalid")) for line in rendered(validate_data([good])))  # one file: no summary


def test_token_lengths_and_an_empty_file(tmp_path):
    report = validate_data([write(tmp_path / "a.jsonl", TWO)])
    report.files[0].stats.tokens = TokenStats("tiny", "plain", p50=40, p95=52, p99=60, max=61, mean_prompt=30.25, mean_answer=12.5)
    lines = rendered(report)
    assert "  tokens / sample (plain)  p50 40 · p95 52 · p99 60 · max 61" in lines
    assert "    prompt / answer  mean 30.2 / 12.5 (answer + EOS carry the loss)" in lines
    assert "    tokenizer  tiny" in lines
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    lines = rendered(validate_data([empty]))
    assert not any(line.startswith("  records") for line in lines)  # no table without records
    assert "✗ invalid: 1 error(s), 0 warning(s)" in lines
