"""core/sources.py and core/tables.py: every format gives the same records, the field mapping, steps
written as text, table locations (FILE:ROW, FILE[#INDEX]), and the message for unmapped columns."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from qdtool.core import sources
from qdtool.core.data import Fields, load_records, read_dataset
from qdtool.core.generation import read_questions
from qdtool.core.sources import parse_hub, source_kind, split_steps
from qdtool.errors import DataError, UsageError

RECORDS = [
    {"question": "Is Q big?", "sub_questions": ["What is Q?", "Is #1 big?"], "id": "a"},
    {"question": "세종은 언제 태어났는가?", "sub_questions": ["세종은 누구인가?", "#1은 언제 태어났는가?", "#2는 몇 년인가?"], "id": "b"},
]


def _csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8", newline="")
    return path


def _parquet(path: Path, columns: dict) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path


def _columns(records: list[dict]) -> dict[str, list]:
    return {key: [r[key] for r in records] for key in records[0]}


def _dataset(records: list[dict]):
    from datasets import Dataset

    return Dataset.from_dict(_columns(records))


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """hf://datasets/org/name served from a local directory of Parquet files, as a hub dataset repo
    lays them out (data/SPLIT-00000-of-00001.parquet). Only `hub_location` (NAME -> what
    `load_dataset` gets) is redirected: the same hub_rows and the same `datasets.load_dataset(..., split=...)`
    call run as for a real hub name, which with network would resolve NAME on the hub instead. The
    datasets cache is this test's own, and HF_HUB_OFFLINE=1 stays set: nothing is fetched."""
    import datasets

    root = tmp_path / "hub" / "org__name" / "data"
    root.mkdir(parents=True)
    _parquet(root / "train-00000-of-00001.parquet", {"q": [r["question"] for r in RECORDS], "steps": [r["sub_questions"] for r in RECORDS]})
    _parquet(root / "validation-00000-of-00001.parquet", {"q": ["Is V?"], "steps": [["What is V?", "Is #1 V?"]]})
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    asked = []

    def location(name: str) -> str:
        asked.append(name)
        return str(tmp_path / "hub" / name.replace("/", "__"))

    monkeypatch.setattr(sources, "hub_location", location)
    return asked


def test_every_format_gives_the_same_records(tmp_path, hub):
    from datasets import DatasetDict

    (tmp_path / "r.json").write_text(json.dumps(RECORDS, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in RECORDS), encoding="utf-8")
    lines = ["question,sub_questions,id"] + [f'"{r["question"]}","{chr(10).join(r["sub_questions"])}",{r["id"]}' for r in RECORDS]
    _csv(tmp_path / "r.csv", "\n".join(lines) + "\n")
    tsv = ["question\tsub_questions\tid"] + [f'{r["question"]}\t{json.dumps(r["sub_questions"], ensure_ascii=False)}\t{r["id"]}'
                                              for r in RECORDS]
    _csv(tmp_path / "r.tsv", "\n".join(tsv) + "\n")
    _parquet(tmp_path / "r.parquet", _columns(RECORDS))
    _dataset(RECORDS).save_to_disk(str(tmp_path / "saved"))
    DatasetDict({"train": _dataset(RECORDS), "test": _dataset(RECORDS[:1])}).save_to_disk(str(tmp_path / "dict"))
    specs = ["r.json", "r.jsonl", "r.csv", "r.tsv", "r.parquet", "saved", "dict", "dict:train"]
    for spec in specs:
        result = load_records(tmp_path / spec)
        assert result.problems == [], (spec, result.problems)
        assert [r.to_dict() for r in result.records] == RECORDS, spec
    assert [r.to_dict() for r in read_dataset(f"{tmp_path / 'dict'}:test")] == RECORDS[:1]
    kinds = [load_records(tmp_path / spec).format for spec in specs]
    assert kinds == ["json", "jsonl", "csv", "tsv", "parquet", "dataset", "dataset", "dataset"]
    hubbed = load_records("hf://datasets/org/name", fields=Fields("q", "steps"))  # split train by default
    assert hubbed.format == "hub" and hub == ["org/name"]
    assert [r.to_dict() for r in hubbed.records] == [{k: v for k, v in r.items() if k != "id"} for r in RECORDS]


def test_a_hub_split_and_its_mapping_and_the_errors(hub):
    (record,) = read_dataset("hf://datasets/org/name:validation", fields=Fields("q", "steps"))
    assert (record.question, record.sub_questions, record.location) == ("Is V?", ["What is V?", "Is #1 V?"],
                                                                          "hf://datasets/org/name:validation[#0]")
    unknown = r"^hf://datasets/org/name:test: Unknown split \"test\". Should be one of \['train', 'validation'\]"
    with pytest.raises(UsageError, match=unknown):
        load_records("hf://datasets/org/name:test")
    result = load_records("hf://datasets/org/name")  # not mapped: one message with the columns there are
    assert [str(p) for p in result.problems] == [
        'hf://datasets/org/name: no "question" column; columns found: q, steps; map them with --question-field q --steps-field steps']


def test_a_hub_dataset_that_is_not_one_table_is_a_message(hub, tmp_path):
    root = tmp_path / "hub" / "org__mixed" / "data"
    root.mkdir(parents=True)
    _parquet(root / "train-00000-of-00001.parquet", {"q": ["A?"], "steps": [["a?", "b?"]]})
    _parquet(root / "validation-00000-of-00001.parquet", {"q": ["B?"], "steps": ["a?"]})  # a string where train has a list
    with pytest.raises(UsageError, match=r"^hf://datasets/org/mixed: the hub dataset org/mixed does not load as one table \("):
        load_records("hf://datasets/org/mixed")


def test_hub_spelling():
    assert parse_hub("hf://datasets/org/name") == ("org/name", "train")
    assert parse_hub("hf://datasets/squad:validation[:100]") == ("squad", "validation[:100]")
    assert parse_hub("hf:/datasets/org/name:test") == ("org/name", "test")  # as a Path writes it
    for bad in ("hf://datasets/", "hf://datasets/a/b/c", "hf://datasets/org/name:"):
        with pytest.raises(UsageError, match="not a hub dataset; write hf://datasets/NAME or hf://datasets/NAME:SPLIT"):
            parse_hub(bad)


def test_an_unreachable_hub_dataset_says_what_to_do(monkeypatch, tmp_path):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UsageError) as info:
        load_records("hf://datasets/nobody-qdtool/nothing-here")
    text = str(info.value)
    assert text.startswith("hf://datasets/nobody-qdtool/nothing-here: cannot load the hub dataset nobody-qdtool/nothing-here (")
    assert "HF_HUB_OFFLINE=1 is set, so only datasets already in the cache load" in text


def test_kind_by_name(tmp_path):
    (tmp_path / "d").mkdir()
    names = ["a.json", "a.jsonl", "a.NDJSON", "a.txt", "a", "a.CSV", "a.tsv", "a.parquet", "a.pq", str(tmp_path / "d"),
             f"{tmp_path / 'd'}:test", "hf://datasets/x"]
    assert [source_kind(n) for n in names] == ["json"] * 5 + ["csv", "tsv", "parquet", "parquet", "dataset", "dataset", "hub"]


@pytest.mark.parametrize(("text", "steps"), [
    ("What is Q?\nIs #1 big?", ["What is Q?", "Is #1 big?"]),
    ("1. What is Q?\r\n2) Is #1 big?\n\n", ["What is Q?", "Is #1 big?"]),
    ("- What is Q?\n- Is #1 big?", ["What is Q?", "Is #1 big?"]),
    ("1. What is Q? 2. Is #1 big? 3. Was it in 1990. Or not?", ["What is Q?", "Is #1 big?", "Was it in 1990. Or not?"]),
    ("1. Who won #1? 3. Skipped 2. Then?", ["Who won #1? 3. Skipped", "Then?"]),  # numbers in order only
    ('["What is Q?", "Is #1 big?"]', ["What is Q?", "Is #1 big?"]),
    ("['What is Q?', \"Is #1's big?\"]", ["What is Q?", "Is #1's big?"]),  # pandas writes a list column so
    ("Is Q big?", ["Is Q big?"]),
    ("[not a list", ["[not a list"]),
    ("Pay 2. Then 1. Done", ["Pay 2. Then 1. Done"]),  # "1." not at the start: not a numbered list
])
def test_steps_written_as_text(text, steps):
    assert split_steps(text) == steps


def test_steps_as_a_list_newlines_or_numbers_through_the_mapping(tmp_path):
    _parquet(tmp_path / "m.parquet", {"q": ["A?", "B?", "C?"], "decomp": [["x?", "#1 y?"], ["x?", "#1 z?"], ["x?", "#1 w?"]]})
    assert [r.sub_questions for r in read_dataset(tmp_path / "m.parquet", fields=Fields("q", "decomp"))] == [
        ["x?", "#1 y?"], ["x?", "#1 z?"], ["x?", "#1 w?"]]
    path = _csv(tmp_path / "m.csv", 'q,decomp,question\nA?,"x?\n#1 y?",ignored\nB?,1. x? 2. #1 z?,ignored\n')
    records = read_dataset(path, fields=Fields("q", "decomp"))
    assert [r.to_dict() for r in records] == [{"question": "A?", "sub_questions": ["x?", "#1 y?"]},
                                              {"question": "B?", "sub_questions": ["x?", "#1 z?"]}]
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text(json.dumps({"q": "C?", "decomp": "1. x? 2. #1 w?", "id": 7}) + "\n")  # JSON: split once the field is named
    assert [r.to_dict() for r in read_dataset(jsonl, fields=Fields("q", "decomp"))] == [
        {"question": "C?", "sub_questions": ["x?", "#1 w?"], "id": 7}]
    jsonl.write_text(json.dumps({"question": "C?", "sub_questions": "x?\ny?"}) + "\n")  # the default field stays a list
    assert [str(p) for p in load_records(jsonl).errors] == [f"{jsonl}:1: sub_questions: must be a non-empty list of strings (got str)"]


def test_a_csv_without_the_mapping_names_the_columns_it_has(tmp_path):
    path = _csv(tmp_path / "x.csv", "q,decomp\nIs Q big?,What is Q?\n")
    result = load_records(path)
    assert result.records == [] and [str(p) for p in result.problems] == [
        f'{path}: no "question" column; columns found: q, decomp; map them with --question-field q --steps-field decomp']
    one = _csv(tmp_path / "one.csv", "id,question,plan\n1,Is Q big?,What is Q?\n")
    assert [str(p) for p in load_records(one).problems] == [
        f'{one}: no "sub_questions" column; columns found: id, question, plan; map it with --steps-field plan']
    odd = _csv(tmp_path / "odd.csv", "a,b c\n1,2\n")
    assert str(load_records(odd).problems[0]).endswith("columns found: a, b c; map them with --question-field COLUMN --steps-field COLUMN")
    with pytest.raises(DataError) as info:
        read_dataset(path)
    assert "no \"question\" column; columns found: q, decomp" in str(info.value)
    assert f"Run `qdtool validate-data {path}` for the full report." in str(info.value)


def test_csv_problems_are_at_the_spreadsheet_row(tmp_path):
    path = _csv(tmp_path / "rows.csv", (
        "question,sub_questions\n"  # row 1
        'Is Q big?,"What is Q?\nIs #1 big?"\n'  # row 2, over two lines
        ",a?\n"  # row 3: a spreadsheet's row 3, line 4 of the file
        "\n"  # row 4: blank, skipped but counted
        "Is R red?,What is R?,extra\n"  # row 5
        "Is S?,\n"  # row 6
    ))
    result = load_records(path)
    assert [r.location for r in result.records] == [f"{path}:2"]
    assert [str(p) for p in result.problems] == [
        f"{path}:3: question: must not be empty",
        f"{path}:3: sub_questions: only one step; a decomposition usually has two or more",
        f"{path}:5: has 3 cell(s), but the header has 2 column(s); quote a cell that holds the delimiter",
        f"{path}:6: sub_questions: must not be empty",
    ]
    assert [p.line for p in result.problems] == [3, 3, 5, 6]


def test_parquet_problems_are_at_the_index(tmp_path):
    path = _parquet(tmp_path / "p.parquet", {"question": ["Is Q big?", None, "Is Q big?"],
                                             "sub_questions": [["What is Q?", "Is #1 big?"], ["a?", "b?"], ["c?", "d?"]]})
    assert [str(p) for p in load_records(path).problems] == [
        f"{path}[#1]: question: must be a string (got null)",
        f"{path}[#2]: question: duplicate of the question at {path}[#0]",
    ]


def test_hostile_tables_get_located_messages(tmp_path):
    cases = {
        "u16.csv": ("question,sub_questions\n".encode("utf-16"),
                    "u16.csv: file is UTF-16 (it starts with a UTF-16 byte-order mark); save it as UTF-8"),
        "empty.csv": (b"\n\n", "empty.csv: file is empty; expected a header row naming the columns, then one record per row"),
        "latin1.csv": ("question,sub_questions\ncafé?,a?\n".encode("latin-1"), "latin1.csv:2: not valid UTF-8; save the file as UTF-8"),
        "twice.csv": (b"question,question,sub_questions\n",
                      "twice.csv:1: the header names 'question' more than once; give every column its own name"),
        "junk.parquet": (b"PAR1 not really", "junk.parquet: not a Parquet file ("),
        "bom.csv": (b"\xef\xbb\xbfquestion,sub_questions\nIs Q big?,What is Q?\n", None),
    }
    for name, (content, expected) in cases.items():
        (tmp_path / name).write_bytes(content)
        problems = [str(p) for p in load_records(tmp_path / name).errors]
        if expected is None:
            assert problems == [], name
        else:
            assert len(problems) == 1 and problems[0].startswith(f"{tmp_path / name}"[: -len(name)] + expected), (name, problems)


def test_a_fifo_or_a_plain_directory_is_refused(tmp_path):
    pipe = tmp_path / "p.csv"
    os.mkfifo(pipe)
    with pytest.raises(UsageError, match=r"p.csv: is a named pipe \(FIFO\), not a regular file"):
        load_records(pipe)
    (tmp_path / "plain").mkdir()
    with pytest.raises(UsageError, match=r"plain: is a directory, and not one written by Dataset.save_to_disk"):
        load_records(tmp_path / "plain")
    with pytest.raises(UsageError, match="no such file"):
        load_records(tmp_path / "nope.parquet")


def test_a_dataset_dict_without_train_needs_a_split(tmp_path):
    from datasets import DatasetDict

    DatasetDict({"a": _dataset(RECORDS), "b": _dataset(RECORDS)}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(UsageError, match=r"dd holds several splits \(a, b\); pass one as .*dd:a$"):
        load_records(tmp_path / "dd")
    with pytest.raises(UsageError, match=r"dd has no split 'c' \(a, b\)"):
        load_records(f"{tmp_path / 'dd'}:c")
    assert len(load_records(f"{tmp_path / 'dd'}:b").records) == 2


def test_questions_from_tables(tmp_path, hub):
    path = _csv(tmp_path / "questions.csv", "id,q\n1,Is Q big?\n2,Is R red?\n")
    assert read_questions(path, question_field="q") == [{"id": "1", "question": "Is Q big?"}, {"id": "2", "question": "Is R red?"}]
    with pytest.raises(DataError, match=r'no "question" column; columns found: id, q; map it with --question-field q'):
        read_questions(path)
    _parquet(tmp_path / "questions.parquet", {"question": ["Is Q big?", ""]})
    with pytest.raises(DataError, match=r'questions.parquet\[#1\]: record 2 has no "question" string'):
        read_questions(tmp_path / "questions.parquet")
    assert [r["question"] for r in read_questions("hf://datasets/org/name", question_field="q")] == [r["question"] for r in RECORDS]
    jsonl = tmp_path / "q.jsonl"
    jsonl.write_text('{"text": "Is Q big?", "question": "shadowed"}\n')
    assert read_questions(jsonl, question_field="text") == [{"question": "Is Q big?"}]
    assert read_questions("-", b"Is Q big?\n", question_field="text") == [{"question": "Is Q big?"}]  # plain lines have no fields


def test_table_values_json_cannot_write_become_strings(tmp_path):
    import datetime

    path = _parquet(tmp_path / "t.parquet", {"question": ["Is Q big?"], "sub_questions": [["What is Q?", "Is #1 big?"]],
                                             "when": [datetime.date(2026, 12, 2)], "blob": [b"\x00ab"]})
    (record,) = read_dataset(path)
    assert record.extra == {"when": "2026-12-02", "blob": "\x00ab"}
    json.dumps(record.to_dict())
