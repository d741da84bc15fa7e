"""core/results.py: decompose's output file keeps finished results, resumes, and refuses what is not its own."""

from __future__ import annotations

import errno
import json

import pytest

from qdtool.core.files import WriteError
from qdtool.core.results import ResultsFile
from qdtool.errors import DataError, UsageError


def result(question: str, **extra) -> dict:
    return {**extra, "question": question, "sub_questions": ["A?"], "raw": "1. A?", "parse_ok": True}


def test_each_result_is_on_disk_as_soon_as_it_is_appended(tmp_path):
    path = tmp_path / "out.jsonl"
    sink = ResultsFile(path)
    sink.append(result("Q1?", id=1))
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == [1]  # before close
    sink.append(result("Q2?", id=2))
    sink.close()
    assert path.read_text().count("\n") == 2 and sink.written == 2


def test_a_result_is_one_utf8_line_that_a_rerun_recognises(tmp_path):
    path = tmp_path / "out.jsonl"
    with ResultsFile(path) as sink:
        sink.append(result("서울의 인구는?", id="é"))
    assert path.read_text(encoding="utf-8").splitlines()[0].startswith('{"id": "é", "question": "서울의 인구는?", "sub_questions": ["A?"]')
    assert ResultsFile(path).pending([{"id": "é", "question": "?"}, {"question": "서울의 인구는?"}]) == [1]


def test_a_rerun_skips_what_is_there_by_id_else_by_text(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text(json.dumps(result("Q1?", id=1)) + "\n" + json.dumps(result("Same?")) + "\n")
    rows = [{"id": 1, "question": "Q1 reworded?"}, {"id": 2, "question": "Q2?"}, {"question": "Same?"}, {"question": "Same?"}]
    # id 1 is done whatever its text; "Same?" asked twice is done once, so it runs once more
    assert ResultsFile(path).pending(rows) == [1, 3]


def test_a_line_cut_by_a_kill_is_dropped_and_a_complete_one_kept(tmp_path):
    path = tmp_path / "out.jsonl"
    good = json.dumps(result("Q1?", id=1)) + "\n"
    path.write_text(good + json.dumps(result("Q2?", id=2))[:25])
    sink = ResultsFile(path)
    assert path.read_text() == good
    assert sink.pending([{"id": 1, "question": "Q1?"}, {"id": 2, "question": "Q2?"}]) == [1]
    sink.append(result("Q2?", id=2))
    sink.close()
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == [1, 2]

    path.write_text(good.rstrip("\n"))  # whole, only the newline missing
    ResultsFile(path).append(result("Q3?", id=3))
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == [1, 3]


def test_a_file_that_is_not_decompose_output_is_never_appended_to(tmp_path):
    path = tmp_path / "questions.jsonl"
    original = '{"id": 1, "question": "A?"}\n{"id": 2, "question": "B?"}\n'
    path.write_text(original)
    with pytest.raises(DataError, match=r"questions.jsonl:1: not a decompose result.*--overwrite"):
        ResultsFile(path)
    path.write_text(json.dumps(result("Q?")) + "\n" + "[" * 100_000 + "\n")  # hostile nesting: no RecursionError
    with pytest.raises(DataError, match=r"questions.jsonl:2: not a decompose result"):
        ResultsFile(path)
    path.write_bytes(b"\xff\xfe\x00junk\n")
    with pytest.raises(DataError, match=r"questions.jsonl:1: not a decompose result"):
        ResultsFile(path)


def test_overwrite_replaces_the_file_only_when_the_first_result_arrives(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text("something the user had\n")
    sink = ResultsFile(path, overwrite=True)
    assert sink.pending([{"question": "Q?"}]) == [0]
    assert path.read_text() == "something the user had\n"  # a run that fails to start loses nothing
    sink.append(result("Q?"))
    sink.close()
    assert [json.loads(line)["question"] for line in path.read_text().splitlines()] == ["Q?"]


def test_an_unwritable_output_fails_at_once_and_a_full_disk_says_so(tmp_path, monkeypatch):
    """Tests run as root, where chmod does not stop writes: the file system refuses here instead."""
    import builtins
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    with monkeypatch.context() as patch:
        patch.setattr(tempfile, "mkstemp", read_only)
        with pytest.raises(UsageError, match=f"cannot write {tmp_path}: the file system is read-only"):
            ResultsFile(tmp_path / "out.jsonl")
    with pytest.raises(UsageError, match="is a directory"):
        ResultsFile(tmp_path)

    sink = ResultsFile(tmp_path / "out.jsonl")
    real_open = builtins.open

    class Full:
        def __init__(self, *args, **kwargs):
            self.file = real_open(*args, **kwargs)

        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.file, name)

    monkeypatch.setattr("pathlib.Path.open", lambda self, *a, **k: Full(self, *a, **k))
    with pytest.raises(WriteError, match=f"no space left on the device holding {tmp_path / 'out.jsonl'}"):
        sink.append(result("Q?"))
