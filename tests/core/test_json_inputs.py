"""The one JSON reader behind validate-data, `eval --predictions` and `decompose --input`: the same
hostile input gets the same located message from each entry point, never a traceback."""

from __future__ import annotations

import errno
import os
import threading
import time

import pytest

from qdtool.core.data import load_records
from qdtool.core.evaluation import read_predictions
from qdtool.core.generation import read_questions
from qdtool.errors import DataError, UsageError

RECORD = b'{"question": "Q?", "sub_questions": ["a?", "b?"]'


def _validate(path):
    return [str(p) for p in load_records(path).errors]


def _raised(reader):
    def run(path):
        try:
            reader(path)
        except DataError as exc:
            return [line.strip() for line in str(exc).splitlines()[1:] if line.startswith("  ")]
        raise AssertionError(f"{reader.__name__} accepted the input")

    return run


ENTRY_POINTS = {"validate-data": _validate, "eval": _raised(read_predictions), "decompose": _raised(read_questions)}

# (name, content, the one problem every entry point reports)
HOSTILE = [
    ("deep.jsonl", b"[" * 1000 + b"]" * 1000 + b"\n",
     "deep.jsonl:1: JSON nested too deeply (more than 100 levels of [ and {); flatten the record"),
    ("deeper.jsonl", b"{\"a\": " * 20000 + b"1" + b"}" * 20000 + b"\n",
     "deeper.jsonl:1: JSON nested too deeply (more than 100 levels of [ and {); flatten the record"),
    ("bigint.jsonl", RECORD + b', "n": ' + b"5" * 4301 + b"}\n",
     "bigint.jsonl:1:56: integer with 4,301 digits (the limit is 4,300); write it as a string"),
    ("surrogate.jsonl", b'{"question": "Q\\ud800?", "sub_questions": ["a?", "b?"]}\n',
     "surrogate.jsonl:1: question: the escape \\ud800 is a lone UTF-16 surrogate, not a character; "
     "write the character itself, or both halves of its surrogate pair"),
    ("surrogatekey.jsonl", RECORD + b', "\\udc80": 1}\n',
     "surrogatekey.jsonl:1: a key has the escape \\udc80, a lone UTF-16 surrogate, not a character; "
     "write the character itself, or both halves of its surrogate pair"),
    ("utf16.jsonl", (RECORD + b"}\n").decode().encode("utf-16"),
     "utf16.jsonl: file is UTF-16 (it starts with a UTF-16 byte-order mark); save it as UTF-8"),
    ("latin1.jsonl", '{"question": "café?"}\n'.encode("latin-1"),
     "latin1.jsonl:1: not valid UTF-8 (byte 0xe9 at column 18); save the file as UTF-8"),
    ("array.jsonl", b"[\n  " + RECORD + b"}\n]\n",
     "array.jsonl:1: the file holds a JSON array over 3 lines, but a .jsonl file has one record per line; "
     "rename the file to .json, or write one record per line"),
]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize(("name", "content", "expected"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_input_gets_one_located_message_everywhere(tmp_path, monkeypatch, entry, name, content, expected):
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_bytes(content)
    assert ENTRY_POINTS[entry](name) == [expected]


@pytest.fixture
def fifo(tmp_path):
    """A FIFO, and a writer that opens it after 5 s: a reader that waits on it (the bug) gets EOF
    and fails its test instead of hanging the suite."""
    path = tmp_path / "q.jsonl"
    os.mkfifo(path)
    done = threading.Event()

    def unblock() -> None:
        time.sleep(5)
        while not done.is_set():
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
                return
            except OSError as exc:  # ENXIO: nobody reads it (the fix): try again until the test ends
                if exc.errno != errno.ENXIO:
                    return
                time.sleep(0.1)

    threading.Thread(target=unblock, daemon=True).start()
    yield path
    done.set()


@pytest.mark.parametrize("reader", [load_records, read_predictions, read_questions], ids=["validate-data", "eval", "decompose"])
def test_a_fifo_is_refused_by_every_reader(fifo, reader):
    start = time.monotonic()
    with pytest.raises(UsageError, match=r"q.jsonl: is a named pipe \(FIFO\), not a regular file; save the data to a file and pass that"):
        reader(fifo)
    assert time.monotonic() - start < 4  # refused at once, not after a writer came


def test_binary_junk_on_stdin_is_a_located_error():
    with pytest.raises(DataError) as info:
        read_questions("-", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff")
    assert str(info.value).splitlines()[:3] == [
        "<stdin> has 2 error(s):",
        "  <stdin>:1: not valid UTF-8 (byte 0x89 at column 1); save the file as UTF-8",
        "  <stdin>:3: not valid UTF-8 (byte 0xff at column 9); save the file as UTF-8",
    ]


def test_questions_from_stdin_bytes_and_text():
    assert read_questions("-", "세종은 누구인가?\n".encode()) == [{"question": "세종은 누구인가?"}]
    assert read_questions("-", b'\xef\xbb\xbf{"question": "A?", "id": 3}\r\n') == [{"question": "A?", "id": 3}]
    with pytest.raises(DataError, match="<stdin>: file is empty; expected JSON questions"):
        read_questions("-", b"  \n")
    with pytest.raises(DataError, match=r'<stdin>:2: record 2 has no "question" string'):
        read_questions("-", b'{"question": "A?"}\n{"question": "  "}\n')
