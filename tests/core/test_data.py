"""core/data.py: every broken input gets its message and its place."""

from __future__ import annotations

import json

import pytest

from qdtool.core.data import MAX_JSON_DEPTH, find_leaks, load_records, read_dataset, read_json_rows
from qdtool.errors import DataError, UsageError

GOOD = {"question": "Was Aristotle alive when the laptop was "
                    "invented?", "sub_questions": ["When did Aristotle die?", "When was the laptop invented?", "Is #2 before #1?"]}


def jl(*records) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in records)


# (file name, content, expected problem texts (str(problem)), each "error:" or "warning:" prefixed)
CASES = [
    ("empty.jsonl", b"", ["error:empty.jsonl: file is empty; expected JSON records"]),
    ("blank.jsonl", b"\n  \n", ["error:blank.jsonl: file is empty; expected JSON records"]),
    ("bad.jsonl", jl(GOOD, b"{\"question\": \"x\",}"),
     ["error:bad.jsonl:2:18: invalid JSON: Expecting property name enclosed in double quotes"]),
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
    ("strsub.jsonl", jl({"question": "Q?", "sub_questions": "a? b?"}),
     ["error:strsub.jsonl:1: sub_questions: must be a non-empty list of strings (got str)"]),
    ("emptysub.jsonl", jl({"question": "Q?", "sub_questions": []}),
     ["error:emptysub.jsonl:1: sub_questions: must be a non-empty list of strings (got empty list)"]),
    (
        "escapekey.jsonl",
        jl({"question": "Q?", "sub_questions\x1b[2J": ["a?", "b?"]}),
        ['error:escapekey.jsonl:1: sub_questions: missing (found "sub_questions\\u001b[2J": rename it to "sub_questions")'],
    ),
    ("nullsub.jsonl", jl({"question": "Q?", "sub_questions": None}),
     ["error:nullsub.jsonl:1: sub_questions: must be a non-empty list of strings (got null)"]),
    ("intstep.jsonl", jl({"question": "Q?", "sub_questions": ["a?", 3]}),
     ["error:intstep.jsonl:1: sub_questions: step 2 must be a string (got int)"]),
    ("blankstep.jsonl", jl({"question": "Q?", "sub_questions": ["a?", " \t"]}),
     ["error:blankstep.jsonl:1: sub_questions: step 2 is blank"]),
    ("same.jsonl", jl({"question": "Is it Q?", "sub_questions": ["a?", "is  it q?"]}),
     ["error:same.jsonl:1: sub_questions: step 2 is identical to the question"]),
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
    ("latin1.jsonl", jl(GOOD) + "{\"question\": \"café?\"}\n".encode("latin-1"),
     ["error:latin1.jsonl:2: not valid UTF-8 (byte 0xe9 at column 18); save the file as UTF-8"]),
    (
        "dup.jsonl",
        jl(GOOD, {**GOOD, "question": GOOD["question"].upper()}),
        ["warning:dup.jsonl:2: question: duplicate of the question at dup.jsonl:1"],
    ),
    ("single.jsonl", jl({"question": "Q?", "sub_questions": ["a?"]}),
     ["warning:single.jsonl:1: sub_questions: only one step; a decomposition usually has two or more"]),
    ("repeat.jsonl", jl({"question": "Q?", "sub_questions": ["a?", "A?"]}),
     ["warning:repeat.jsonl:1: sub_questions: step 2 repeats step 1"]),
    (
        "long.jsonl",
        jl({"question": "Q" * 1500 + "?", "sub_questions": ["a" * 600 + "?", "b?"]}),
        ["warning:long.jsonl:1: very long record (2,104 characters); it may not fit max_seq_len"],
    ),
    ("arr.json", json.dumps([GOOD, {"question": ""}]).encode(),
     ["error:arr.json[#1]: question: must not be empty", "error:arr.json[#1]: sub_questions: missing"]),
    ("emptyarr.json", b"[]", ["error:emptyarr.json: the array has no records"]),
    ("trailing.json", b'[{"question": "a?",\n "sub_questions": ["b?", "c?"],}]',
     ["error:trailing.json:2:32: invalid JSON: Expecting property name enclosed in double quotes"]),
    (
        "pretty.json",
        b'{\n "question": "a?",\n "sub_questions": ["b?", "c?"]\n}\n',
        ["error:pretty.json:1: the file holds one JSON object over 4 lines; write one record per line (JSONL) or a JSON array of records"],
    ),
    # Hostile input (issue 18): each was a traceback or a silent pass before the one JSON reader.
    (
        "prettyarr.jsonl",
        json.dumps([GOOD, GOOD], indent=2).encode(),
        ["error:prettyarr.jsonl:1: the file holds a JSON array over 18 lines, but a .jsonl file has one record per line; "
         "rename the file to .json, or write one record per line"],
    ),
    (
        "onearr.jsonl",
        jl([GOOD, GOOD]),
        ["error:onearr.jsonl:1: the file holds a JSON array, but a .jsonl file has one record per line; "
         "rename the file to .json, or write one record per line"],
    ),
    ("utf16.jsonl", "\ufeff".encode("utf-16-le") + jl(GOOD).decode().encode("utf-16-le"),
     ["error:utf16.jsonl: file is UTF-16 (it starts with a UTF-16 byte-order mark); save it as UTF-8"]),
    ("utf16be.jsonl", jl(GOOD).decode().encode("utf-16"),
     ["error:utf16be.jsonl: file is UTF-16 (it starts with a UTF-16 byte-order mark); save it as UTF-8"]),
    ("nobom16.jsonl", jl(GOOD).decode().encode("utf-16-be"),
     ["error:nobom16.jsonl: file is UTF-16 (NUL bytes between its characters); save it as UTF-8"]),
    ("utf32.jsonl", jl(GOOD).decode().encode("utf-32"),
     ["error:utf32.jsonl: file is UTF-32 (it starts with a UTF-32 byte-order mark); save it as UTF-8"]),
    ("parserdeep.jsonl", jl(GOOD, b"[" * 5000 + b"]" * 5000),
     ["error:parserdeep.jsonl:2: JSON nested too deeply (more than 100 levels of [ and {); flatten the record"]),
    (
        "fielddeep.jsonl",
        jl({**GOOD, "meta": json.loads("[" * 100 + "]" * 100)}),
        ["error:fielddeep.jsonl:1: meta: JSON nested too deeply (more than 100 levels of [ and {); flatten the record"],
    ),
    ("deeparr.json", json.dumps([GOOD, {**GOOD, "meta": json.loads("[" * 100 + "]" * 100)}]).encode(),
     ["error:deeparr.json[#1]: meta: JSON nested too deeply (more than 100 levels of [ and {); flatten the record"]),
    ("bigint.jsonl", b'{"n": ' + b"7" * 4301 + b"}\n",
     ["error:bigint.jsonl:1:7: integer with 4,301 digits (the limit is 4,300); write it as a string"]),
    ("bigintarr.json", b'[{"question": "a?",\n "n": -' + b"7" * 5000 + b"}]",
     ["error:bigintarr.json:2:8: integer with 5,000 digits (the limit is 4,300); write it as a string"]),
    (
        "surrogate.jsonl",
        jl(GOOD, b'{"question": "Q\\ud800?", "sub_questions": ["a?", "b?"]}'),
        ["error:surrogate.jsonl:2: question: the escape \\ud800 is a lone UTF-16 surrogate, not a character; "
         "write the character itself, or both halves of its surrogate pair"],
    ),
    (
        "surrogatestep.json",
        b'[{"question": "Q?", "sub_questions": ["a?", "b\\uDFFF?"]}]',
        ["error:surrogatestep.json[#0]: sub_questions: the escape \\udfff is a lone UTF-16 surrogate, not a character; "
         "write the character itself, or both halves of its surrogate pair"],
    ),
    (
        "surrogatekey.jsonl",
        b'{"question": "Q?", "sub_questionz\\udc00": ["a?", "b?"]}\n',
        ["error:surrogatekey.jsonl:1: a key has the escape \\udc00, a lone UTF-16 surrogate, not a character; "
         "write the character itself, or both halves of its surrogate pair"],
    ),
    (
        "nestedkey.jsonl",
        b'{"question": "Q?", "sub_questions": ["a?", "b?"], "meta": [{"\\ud800": 1}]}\n',
        ["error:nestedkey.jsonl:1: meta: a key has the escape \\ud800, a lone UTF-16 surrogate, not a character; "
         "write the character itself, or both halves of its surrogate pair"],
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


def test_a_device_is_refused():
    with pytest.raises(UsageError, match="^/dev/null: is a device, not a regular file; save the data to a file and pass that$"):
        load_records("/dev/null")  # /dev/zero would be read until memory runs out


def test_nesting_up_to_the_limit_is_kept(tmp_path):
    deepest = {**GOOD, "meta": json.loads("[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1))}  # the record is level 1
    result = load_records(_write(tmp_path / "ok.jsonl", jl(deepest)))
    assert result.problems == [] and result.records[0].extra["meta"] == deepest["meta"]
    result = load_records(_write(tmp_path / "ok.json", json.dumps([deepest]).encode()))
    assert result.problems == []


def test_valid_escapes_near_surrogates_are_kept(tmp_path):
    content = b'{"question": "Is \\ud83d\\ude00 a face?", "sub_questions": ["What is \\\\ud800?", "Is #1 a face?"]}\n'
    result = load_records(_write(tmp_path / "pair.jsonl", content))
    assert result.problems == []
    assert result.records[0].question == "Is \U0001F600 a face?"  # a full pair is one character
    assert result.records[0].sub_questions[0] == "What is \\ud800?"  # an escaped backslash, not an escape


def test_a_surrogate_stops_training_data_before_the_tokenizer(tmp_path):
    path = _write(tmp_path / "train.jsonl", jl(GOOD, b'{"question": "Q?", "sub_questions": ["\\ud800", "b?"]}'))
    with pytest.raises(DataError, match=r"train.jsonl:2: sub_questions: the escape \\ud800 is a lone UTF-16 surrogate"):
        read_dataset(path)


def test_stdin_content_as_bytes_or_text(tmp_path):
    junk = read_json_rows("-", b"\x00\xff\xfe\x81binary", what="questions", plain_lines=True)
    assert [str(r.problem) for r in junk.rows] == ["<stdin>:1: not valid UTF-8 (byte 0xff at column 2); save the file as UTF-8"]
    # Python hands undecodable stdin bytes over as surrogate escapes: they are reported as the bytes they were.
    text = b"ok?\n\xe9t\xe9?\n".decode("utf-8", "surrogateescape")
    rows = list(read_json_rows("-", text, plain_lines=True).rows)  # rows are decoded as they are read
    assert rows[0].value == "ok?" and str(rows[1].problem) == "<stdin>:2: not valid UTF-8 (byte 0xe9 at column 1); save the file as UTF-8"


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
