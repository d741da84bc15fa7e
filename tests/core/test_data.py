"""core/data.py: every broken input gets its message and its place."""

from __future__ import annotations

import json

import pytest

from qdtool.core.data import find_leaks, load_records, read_dataset
from qdtool.errors import DataError, UsageError

GOOD = {"question": "Was Aristotle alive when the laptop was invented?", "sub_questions": ["When did Aristotle die?", "When was the laptop invented?", "Is #2 before #1?"]}


def jl(*records) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in records)


# (file name, content, expected problem texts (str(problem)), each "error:" or "warning:" prefixed)
CASES = [
    ("empty.jsonl", b"", ["error:empty.jsonl: file is empty; expected JSON records"]),
    ("blank.jsonl", b"\n  \n", ["error:blank.jsonl: file is empty; expected JSON records"]),
    ("bad.jsonl", jl(GOOD, b"{\"question\": \"x\",}"), ["error:bad.jsonl:2:18: invalid JSON: Expecting property name enclosed in double quotes"]),
    ("list.jsonl", jl([1, 2]), ['error:list.jsonl:1: record must be a JSON object with "question" and "sub_questions" (got list)']),
    ("noq.jsonl", jl({"sub_questions": ["a?", "b?"]}), ["error:noq.jsonl:1: question: missing"]),
    ("emptyq.jsonl", jl({"question": "  ", "sub_questions": ["a?", "b?"]}), ["error:emptyq.jsonl:1: question: must not be empty"]),
    ("intq.jsonl", jl({"question": 7, "sub_questions": ["a?", "b?"]}), ["error:intq.jsonl:1: question: must be a string (got int)"]),
    ("nosub.jsonl", jl({"question": "Q?"}), ["error:nosub.jsonl:1: sub_questions: missing"]),
    (
        "alias.jsonl",
        jl({"question": "Q?", "decomposition": ["a?", "b?"]}),
        ['error:alias.jsonl:1: sub_questions: missing (found "decomposition": rename it to "sub_questions")'],
    ),
    ("strsub.jsonl", jl({"question": "Q?", "sub_questions": "a? b?"}), ["error:strsub.jsonl:1: sub_questions: must be a non-empty list of strings (got str)"]),
    ("emptysub.jsonl", jl({"question": "Q?", "sub_questions": []}), ["error:emptysub.jsonl:1: sub_questions: must be a non-empty list of strings (got empty list)"]),
    ("nullsub.jsonl", jl({"question": "Q?", "sub_questions": None}), ["error:nullsub.jsonl:1: sub_questions: must be a non-empty list of strings (got null)"]),
    ("intstep.jsonl", jl({"question": "Q?", "sub_questions": ["a?", 3]}), ["error:intstep.jsonl:1: sub_questions: step 2 must be a string (got int)"]),
    ("blankstep.jsonl", jl({"question": "Q?", "sub_questions": ["a?", " \t"]}), ["error:blankstep.jsonl:1: sub_questions: step 2 is blank"]),
    ("same.jsonl", jl({"question": "Is it Q?", "sub_questions": ["a?", "is  it q?"]}), ["error:same.jsonl:1: sub_questions: step 2 is identical to the question"]),
    (
        "fwdref.jsonl",
        jl({"question": "Q?", "sub_questions": ["a?", "Is #2 big?", "Is #1 in #4?"]}),
        [
            "error:fwdref.jsonl:1: sub_questions: step 2 refers to #2, which is not an earlier step (step 2 may use #1 to #1)",
            "error:fwdref.jsonl:1: sub_questions: step 3 refers to #4, which is not an earlier step (step 3 may use #1 to #2)",
        ],
    ),
    (
        "firstref.jsonl",
        jl({"question": "Q?", "sub_questions": ["What is #1?", "b?"]}),
        ["error:firstref.jsonl:1: sub_questions: step 1 refers to #1, but the first step has no earlier answer to refer to"],
    ),
    ("latin1.jsonl", jl(GOOD) + "{\"question\": \"café?\"}\n".encode("latin-1"), ["error:latin1.jsonl:2: not valid UTF-8 (byte 0xe9 at column 18); save the file as UTF-8"]),
    (
        "dup.jsonl",
        jl(GOOD, {**GOOD, "question": GOOD["question"].upper()}),
        ["warning:dup.jsonl:2: question: duplicate of the question at dup.jsonl:1"],
    ),
    ("single.jsonl", jl({"question": "Q?", "sub_questions": ["a?"]}), ["warning:single.jsonl:1: sub_questions: only one step; a decomposition usually has two or more"]),
    ("repeat.jsonl", jl({"question": "Q?", "sub_questions": ["a?", "A?"]}), ["warning:repeat.jsonl:1: sub_questions: step 2 repeats step 1"]),
    (
        "long.jsonl",
        jl({"question": "Q" * 1500 + "?", "sub_questions": ["a" * 600 + "?", "b?"]}),
        ["warning:long.jsonl:1: very long record (2,104 characters); it may not fit max_seq_len"],
    ),
    ("arr.json", json.dumps([GOOD, {"question": ""}]).encode(), ["error:arr.json[#1]: question: must not be empty", "error:arr.json[#1]: sub_questions: missing"]),
    ("emptyarr.json", b"[]", ["error:emptyarr.json: the array has no records"]),
    ("trailing.json", b'[{"question": "a?",\n "sub_questions": ["b?", "c?"],}]', ["error:trailing.json:2:32: invalid JSON: Expecting property name enclosed in double quotes"]),
    (
        "pretty.json",
        b'{\n "question": "a?",\n "sub_questions": ["b?", "c?"]\n}\n',
        [
            "error:pretty.json:1:2: invalid JSON: Expecting property name enclosed in double quotes",
            "error:pretty.json: the file holds one pretty-printed JSON object; write one record per line (JSONL) or a JSON array of records",
        ],
    ),
]


@pytest.mark.parametrize(("name", "content", "expected"), CASES, ids=[c[0] for c in CASES])
def test_broken_inputs_are_reported_with_place_and_reason(tmp_path, monkeypatch, name, content, expected):
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_bytes(content)
    result = load_records(name)
    got = [f"{p.severity}:{p}" for p in result.problems]
    assert got == expected


def test_every_error_is_reported_not_just_the_first(tmp_path):
    path = tmp_path / "many.jsonl"
    path.write_bytes(jl({"question": ""}, b"nope", GOOD, [1], {"question": "Q?", "sub_questions": "x"}))
    result = load_records(path)
    assert [p.line for p in result.errors] == [1, 1, 2, 4, 5]
    assert len(result.records) == 1


def test_bom_and_crlf_are_accepted_and_extra_fields_kept(tmp_path):
    path = tmp_path / "bom.jsonl"
    record = {**GOOD, "id": "q-1", "source": "test", "meta": {"k": [1, 2]}}
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(record, ensure_ascii=False).encode() + b"\r\n")
    result = load_records(path)
    assert result.problems == []
    assert result.records[0].to_dict() == record


def test_json_array_bom_and_korean(tmp_path):
    path = tmp_path / "ko.json"
    record = {"question": "세종대왕은 언제 태어났는가?", "sub_questions": ["세종대왕은 누구인가?", "#1은 몇 년에 태어났는가?"]}
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps([record], ensure_ascii=False).encode())
    result = load_records(path)
    assert result.ok and result.format == "json"
    assert result.records[0].question == record["question"]


def test_missing_file_and_directory_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        load_records(tmp_path / "nope.jsonl")
    with pytest.raises(UsageError, match="is a directory"):
        load_records(tmp_path)


def test_leakage_between_files(tmp_path):
    train = load_records(_write(tmp_path / "train.jsonl", jl(GOOD, {"question": "Other?", "sub_questions": ["a?", "b?"]})))
    val = load_records(_write(tmp_path / "val.jsonl", jl({**GOOD, "question": "  " + GOOD["question"].lower()})))
    leaks = find_leaks(train.records, val.records, "val.jsonl")
    assert [str(p) for p in leaks] == [f"{tmp_path}/train.jsonl:1: question: also in {tmp_path}/val.jsonl:1 (train/eval leakage)"]


def test_read_dataset_raises_with_every_error(tmp_path):
    path = _write(tmp_path / "x.jsonl", jl({"question": ""}, GOOD))
    with pytest.raises(DataError) as info:
        read_dataset(path)
    assert "x.jsonl has 2 error(s)" in str(info.value)
    assert "x.jsonl:1: question: must not be empty" in str(info.value)
    assert len(read_dataset(_write(tmp_path / "ok.jsonl", jl(GOOD)))) == 1


def _write(path, content: bytes):
    path.write_bytes(content)
    return path
