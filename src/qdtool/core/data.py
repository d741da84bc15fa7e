"""Reading and checking question-decomposition datasets.

Two formats, as the seed tool had them: a JSON array of records, or JSONL (one record per line;
always so for .jsonl files, otherwise a file starting with "[" is read as an array).
A record is `{"question": str, "sub_questions": [str, ...]}`; other fields are kept as they are.
Every problem is collected with its place (`FILE:LINE` for JSONL, `FILE[#INDEX]` for a JSON array,
index from 0), so one run shows all that needs fixing.

`read_json_rows` is the one JSON reader: datasets, `eval --predictions` and `decompose --input` all
decode through it, so hostile input (UTF-16, deep nesting, huge integers, lone surrogates, a FIFO)
gets the same located message everywhere instead of a traceback.
"""

from __future__ import annotations

import difflib
import itertools
import json
import os
import re
import stat
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from qdtool.errors import DataError, UsageError

Severity = Literal["error", "warning"]

LONG_RECORD_CHARS = 2000  # question + steps; such samples rarely fit a short max_seq_len
_REF = re.compile(r"#(\d+)")
_JSONL_SUFFIXES = (".jsonl", ".ndjson")  # always one record per line; other files: "[" starts a JSON array
_FIELD_ALIASES = ("subquestions", "sub-questions", "decomposition", "steps", "questions", "subqs", "sub_question")


@dataclass(frozen=True)
class Problem:
    location: str  # "train.jsonl:17", "train.json[#3]" or "train.jsonl"
    message: str
    severity: Severity = "error"
    field: str | None = None
    line: int | None = None  # 1-based, where known
    column: int | None = None  # 1-based, where known

    def __str__(self) -> str:
        where = self.location if self.column is None else f"{self.location}:{self.column}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None} | {"text": str(self)}


@dataclass
class Record:
    question: str
    sub_questions: list[str]
    extra: dict[str, Any] = field(default_factory=dict)  # every other field, kept as given
    location: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"question": self.question, "sub_questions": list(self.sub_questions), **self.extra}


@dataclass
class LoadResult:
    path: Path
    format: Literal["json", "jsonl", "unknown"]
    records: list[Record]
    problems: list[Problem]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors


def json_type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def normalize_question(text: str) -> str:
    """The key under which two questions count as the same (case and spacing ignored)."""
    return " ".join(text.casefold().split())


def check_record(obj: Any, location: str, line: int | None = None) -> tuple[Record | None, list[Problem]]:
    """Validate one decoded record. Returns the record (None if unusable) and its problems."""

    def err(message: str, fld: str | None = None, severity: Severity = "error") -> Problem:
        return Problem(location, message, severity, fld, line)

    if not isinstance(obj, dict):
        return None, [err(f"record must be a JSON object with \"question\" and \"sub_questions\" (got {json_type_name(obj)})")]
    problems: list[Problem] = []
    question = obj.get("question")
    if "question" not in obj:
        problems.append(err("missing" + _hint(obj, "question"), "question"))
    elif not isinstance(question, str):
        problems.append(err(f"must be a string (got {json_type_name(question)})", "question"))
    elif not question.strip():
        problems.append(err("must not be empty", "question"))

    steps = obj.get("sub_questions")
    if "sub_questions" not in obj:
        problems.append(err("missing" + _hint(obj, "sub_questions"), "sub_questions"))
    elif not isinstance(steps, list) or not steps:
        got = "empty list" if isinstance(steps, list) else json_type_name(steps)
        problems.append(err(f"must be a non-empty list of strings (got {got})", "sub_questions"))
    else:
        problems += _check_steps(steps, question if isinstance(question, str) else None, err)

    if any(p.severity == "error" for p in problems):
        return None, problems
    total_chars = len(question) + sum(len(s) for s in steps)
    if total_chars > LONG_RECORD_CHARS:
        problems.append(err(f"very long record ({total_chars:,} characters); it may not fit max_seq_len", severity="warning"))
    extra = {k: v for k, v in obj.items() if k not in ("question", "sub_questions")}
    return Record(question, list(steps), extra, location), problems


def _check_steps(steps: list[Any], question: str | None, err) -> list[Problem]:
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    qkey = normalize_question(question) if question else None
    for number, step in enumerate(steps, start=1):
        if not isinstance(step, str):
            problems.append(err(f"step {number} must be a string (got {json_type_name(step)})", "sub_questions"))
            continue
        if not step.strip():
            problems.append(err(f"step {number} is blank", "sub_questions"))
            continue
        key = normalize_question(step)
        if key == qkey:
            problems.append(err(f"step {number} is identical to the question", "sub_questions"))
        for ref in sorted({int(m) for m in _REF.findall(step)}):
            if not 1 <= ref < number:
                if number == 1:
                    why = "but the first step has no earlier answer to refer to"
                else:
                    why = f"which is not an earlier step (step {number} may use #1 to #{number - 1})"
                problems.append(err(f"step {number} refers to #{ref}, {why}", "sub_questions"))
        if key in seen:
            problems.append(err(f"step {number} repeats step {seen[key]}", "sub_questions", "warning"))
        seen.setdefault(key, number)
    if len(steps) == 1 and not problems:
        problems.append(err("only one step; a decomposition usually has two or more", "sub_questions", "warning"))
    return problems


def _hint(obj: dict[str, Any], wanted: str) -> str:
    keys = [k for k in obj if isinstance(k, str) and k not in ("question", "sub_questions")]
    candidates = difflib.get_close_matches(wanted, keys, n=1, cutoff=0.6)
    if not candidates and wanted == "sub_questions":
        candidates = [k for k in keys if k.lower() in _FIELD_ALIASES]
    # json.dumps: a key with control characters must not reach the terminal raw
    return f" (found {json.dumps(candidates[0], ensure_ascii=False)}: rename it to \"{wanted}\")" if candidates else ""


def load_records(path: str | Path) -> LoadResult:
    """Read a JSON or JSONL dataset, collecting every problem instead of stopping at the first.

    Raises:
        UsageError: the path is missing, a directory, not a regular file, or unreadable.
    """
    source = read_json_rows(path, what="records")
    problems = list(source.problems)
    records: list[Record] = []
    duplicates = _Duplicates()
    for row in source.rows:
        if row.problem is not None:
            problems.append(row.problem)
            continue
        record, found = check_record(row.value, row.location, row.line)
        problems += found
        if record is not None:
            records.append(record)
            problems += duplicates.check(record, row.line)
    return LoadResult(source.path, source.format, records, problems)  # never "lines": plain_lines is off


# --- The one JSON reader: datasets, predictions (eval) and questions (decompose) all come through here.

MAX_JSON_DEPTH = 100  # levels of [ and {, the record's own included; no record needs more, and deeper breaks recursive code
_INT_DIGITS = getattr(sys, "get_int_max_str_digits", lambda: 4300)() or 4300  # Python's int() limit
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # only these escapes can decode to a lone surrogate
_SURROGATE = re.compile("[\ud800-\udfff]")
_LONG_INT = re.compile(rf"(?:^|[\[:,])\s*-?(\d{{{_INT_DIGITS + 1},}})")  # a number of more digits than int() reads
_NOT_SPACE = re.compile(rb"\S")
_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16"))


@dataclass(slots=True)
class JsonRow:
    """One record's place in its file, and either its decoded value or the problem that stopped it."""

    location: str
    line: int | None
    value: Any = None
    problem: Problem | None = None


@dataclass
class JsonFile:
    path: Path
    format: Literal["json", "jsonl", "lines", "unknown"]
    rows: Iterable[JsonRow]  # decoded as they are read, in file order: iterate once
    problems: list[Problem]  # about the file as a whole (empty, UTF-16, an array in a .jsonl), known at once


class _JsonFault(Exception):
    def __init__(self, message: str, index: int | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.message, self.index, self.field = message, index, field


def read_json_rows(path: str | Path, data: bytes | str | None = None, *, what: str = "records", plain_lines: bool = False) -> JsonFile:
    """Decode a JSON array or JSONL file into rows, never raising for what the file holds.

    Every way a file can be hostile becomes a located Problem: invalid UTF-8 or UTF-16, invalid
    JSON, nesting deeper than MAX_JSON_DEPTH, integers longer than Python parses, lone surrogate
    escapes ("\\ud800", which no tokenizer or UTF-8 writer accepts).

    Args:
        path: the file; "-" with `data` for stdin (named "<stdin>" in messages).
        data: the content, when already read (stdin); a str is taken back to its bytes.
        what: the plural noun in messages ("records", "predictions", "questions").
        plain_lines: a text that starts with neither "[" nor "{" is one question per line.

    Raises:
        UsageError: the path is missing, a directory, not a regular file (a FIFO would block), or unreadable.
    """
    name = "<stdin>" if str(path) == "-" and data is not None else str(path)
    raw = _read_bytes(Path(path)) if data is None else _as_bytes(data)
    result = JsonFile(Path(path), "unknown", [], [])
    encoding = _wide_encoding(raw)
    if encoding:
        result.problems.append(Problem(name, f"file is {encoding}; save it as UTF-8"))
        return result
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    start = _NOT_SPACE.search(raw)  # not raw.strip(): that copies a file of any size
    if start is None:
        result.problems.append(Problem(name, f"file is empty; expected JSON {what}"))
        return result
    opener = raw[start.start():start.start() + 1]
    if plain_lines and opener not in (b"[", b"{"):
        result.format = "lines"
        result.rows = _plain_lines(raw, name)
    elif Path(path).suffix.lower() not in _JSONL_SUFFIXES and opener == b"[":
        result.format = "json"
        _json_array(raw, name, what, result)
    else:
        result.format = "jsonl"
        _json_lines(raw, name, result)
    return result


def _read_bytes(path: Path) -> bytes:
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait forever for a writer.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a directory; pass a .json or .jsonl file") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc.strerror})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise UsageError(f"{path}: is a directory; pass a .json or .jsonl file")
        kind = "a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        raise UsageError(f"{path}: is {kind}, not a regular file; save the data to a file and pass that")
    with os.fdopen(fd, "rb") as f:
        try:
            return f.read()
        except OSError as exc:
            raise UsageError(f"{path}: cannot read ({exc.strerror})") from None


def _as_bytes(data: bytes | str) -> bytes:
    if isinstance(data, bytes):
        return data
    try:  # undecodable stdin bytes arrive as surrogate escapes: take them back to the bytes they were
        return data.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return data.encode("utf-8", "surrogatepass")  # lone surrogates: invalid UTF-8, reported as such


def _wide_encoding(raw: bytes) -> str | None:
    """UTF-16 or UTF-32 by byte-order mark, or by NUL bytes between ASCII characters (RFC 4627, 3)."""
    for bom, encoding in _BOMS:
        if raw.startswith(bom):
            return f"{encoding} (it starts with a {encoding} byte-order mark)"
    head = raw[:4]
    if len(head) == 4 and (head[0::2] == b"\x00\x00" and head[1] and head[3] or head[1::2] == b"\x00\x00" and head[0] and head[2]):
        return "UTF-16 (NUL bytes between its characters)"
    return None


def _position(text: str, index: int) -> tuple[int, int]:
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def decode_json(text: str) -> Any:
    """One JSON value that later code can use safely, or _JsonFault (message, character index if known)."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise _parse_fault(exc, text) from None
    surrogates = _SURROGATE_ESCAPE.search(text) is not None
    if surrogates or _may_be_deep(text):  # most lines need no walk
        fault = _value_fault(value, surrogates)
        if fault:
            raise fault
    return value


def _may_be_deep(text: str) -> bool:
    return text.count("[") + text.count("{") > MAX_JSON_DEPTH


def _parse_fault(exc: ValueError | RecursionError, text: str) -> _JsonFault:
    if isinstance(exc, json.JSONDecodeError):
        return _JsonFault(f"invalid JSON: {exc.msg}", exc.pos)
    if isinstance(exc, RecursionError):
        return _JsonFault(_TOO_DEEP)
    # int() refuses integer literals over sys.get_int_max_str_digits()
    match = _LONG_INT.search(text)
    digits = f"{len(match.group(1)):,} digits" if match else f"over {_INT_DIGITS:,} digits"
    return _JsonFault(f"integer with {digits} (the limit is {_INT_DIGITS:,}); write it as a string", match.start(1) if match else None)


_TOO_DEEP = f"JSON nested too deeply (more than {MAX_JSON_DEPTH} levels of [ and {{); flatten the record"


def _value_fault(value: Any, surrogates: bool) -> _JsonFault | None:
    """What makes a decoded record unusable though it parsed (more than MAX_JSON_DEPTH levels of
    containers, counting the record itself; with `surrogates`, a lone surrogate in a key or string),
    with the record's field it is in. Iterative: a deep value must not recurse."""
    if type(value) not in (dict, list):
        return _JsonFault(_surrogate_message(value, key=False)) if surrogates and type(value) is str and _SURROGATE.search(value) else None
    stack: list[tuple[Any, int, str | None]] = [(value, 1, None)]
    while stack:
        item, level, top = stack.pop()
        if level > MAX_JSON_DEPTH:
            return _JsonFault(_TOO_DEEP, field=top)
        pairs = item.items() if type(item) is dict else zip(itertools.repeat(None), item)
        for key, child in pairs:
            if surrogates:
                if key is not None and _SURROGATE.search(key):
                    return _JsonFault(_surrogate_message(key, key=True), field=top)
                if type(child) is str and _SURROGATE.search(child):
                    return _JsonFault(_surrogate_message(child, key=False), field=top if level > 1 else key)
            if type(child) in (dict, list):
                stack.append((child, level + 1, top if level > 1 else key))
    return None


def _surrogate_message(text: str, key: bool) -> str:
    escape = f"\\u{ord(_SURROGATE.search(text).group()):04x}"
    what = f"a key has the escape {escape}, a lone UTF-16 surrogate," if key else f"the escape {escape} is a lone UTF-16 surrogate,"
    return f"{what} not a character; write the character itself, or both halves of its surrogate pair"


def _fault_problem(fault: _JsonFault, text: str, location: str, line: int | None, name: str) -> Problem:
    if fault.index is None:
        return Problem(location, fault.message, field=fault.field, line=line)
    at_line, column = _position(text, fault.index)
    if line is None:  # a whole-file value: the place is the fault's line in the file
        return Problem(f"{name}:{at_line}", fault.message, field=fault.field, line=at_line, column=column)
    return Problem(location, fault.message, field=fault.field, line=line, column=column)


def _utf8_problem(exc: UnicodeDecodeError, raw: bytes, name: str, line_offset: int = 0) -> Problem:
    line = raw.count(b"\n", 0, exc.start) + 1 + line_offset
    column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
    return Problem(f"{name}:{line}", f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {column}); save the file as UTF-8", line=line)


def _json_array(raw: bytes, name: str, what: str, result: JsonFile) -> None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        result.problems.append(_utf8_problem(exc, raw, name))
        text = raw.decode("utf-8", errors="replace")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        result.problems.append(_fault_problem(_parse_fault(exc, text), text, name, None, name))
        return
    if not isinstance(data, list):  # pragma: no cover - guarded by the leading "["
        result.problems.append(Problem(name, f"expected a JSON array of {what} (got {json_type_name(data)})"))
        return
    if not data:
        result.problems.append(Problem(name, f"the array has no {what}"))
    result.rows = _array_rows(data, name, _SURROGATE_ESCAPE.search(text) is not None, _may_be_deep(text))


def _array_rows(data: list[Any], name: str, surrogates: bool, deep: bool) -> Iterator[JsonRow]:
    for index, item in enumerate(data):
        fault = _value_fault(item, surrogates) if surrogates or deep else None  # each element as a JSONL line would be
        location = f"{name}[#{index}]"
        if fault:
            yield JsonRow(location, None, problem=Problem(location, fault.message, field=fault.field))
        else:
            yield JsonRow(location, None, item)


def _json_lines(raw: bytes, name: str, result: JsonFile) -> None:
    lines = raw.split(b"\n")
    first = next(i for i, line in enumerate(lines) if line.strip())
    head = _json_line(lines[first], first + 1, name)
    hint = _whole_file_hint(raw, name, head, lines)
    if hint is not None:
        result.problems.append(hint)
    else:
        result.rows = itertools.chain([head], _json_line_rows(lines, first + 1, name))


def _json_line_rows(lines: list[bytes], start: int, name: str) -> Iterator[JsonRow]:
    for index in range(start, len(lines)):
        if lines[index].strip():
            yield _json_line(lines[index], index + 1, name)


def _json_line(line_bytes: bytes, number: int, name: str) -> JsonRow:
    row = JsonRow(f"{name}:{number}", number)
    try:
        text = line_bytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        row.problem = _utf8_problem(exc, line_bytes, name, number - 1)
        return row
    try:
        row.value = decode_json(text)
    except _JsonFault as fault:
        row.problem = _fault_problem(fault, text, row.location, number, name)
    return row


def _whole_file_hint(raw: bytes, name: str, row: JsonRow, lines: list[bytes]) -> Problem | None:
    """One clear problem for a whole JSON object or array where one record per line was expected."""
    records_array = isinstance(row.value, list) and row.value and all(isinstance(x, dict) for x in row.value)
    if row.problem is None and not records_array:
        return None  # the first line parsed: only an array of objects alone on its line is a misnamed file
    spread = sum(1 for line in lines if line.strip())
    if row.problem is None and spread > 1:
        return None
    if row.problem is not None:
        try:
            whole = decode_json(raw.decode("utf-8"))
        except (_JsonFault, UnicodeDecodeError):
            return None
    else:
        whole = row.value
    over = f" over {spread} lines" if spread > 1 else ""
    if isinstance(whole, dict):
        return Problem(f"{name}:1", f"the file holds one JSON object{over}; write one record per line (JSONL) or a JSON array of records",
                       line=1)
    if isinstance(whole, list):  # only a .jsonl file starting with "[" is read line by line
        return Problem(f"{name}:1", f"the file holds a JSON array{over}, but a .jsonl file has one record per line; "
                       "rename the file to .json, or write one record per line", line=1)
    return None


def _plain_lines(raw: bytes, name: str) -> Iterator[JsonRow]:
    for number, line_bytes in enumerate(raw.split(b"\n"), start=1):
        if not line_bytes.strip():
            continue
        row = JsonRow(f"{name}:{number}", number)
        try:
            row.value = line_bytes.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            row.problem = _utf8_problem(exc, line_bytes, name, number - 1)
        yield row


def problems_error(name: str, problems: list[Problem], footer: str = "") -> DataError:
    """One DataError listing up to 50 problems (errors only), each with its place."""
    errors = [p for p in problems if p.severity == "error"]
    listed = "\n".join(f"  {p}" for p in errors[:50])
    more = f"\n  ... and {len(errors) - 50} more" if len(errors) > 50 else ""
    return DataError(f"{name} has {len(errors)} error(s):\n{listed}{more}" + (f"\n{footer}" if footer else ""))


class _Duplicates:
    """Warns, in file order, when a question was already seen earlier in the file."""

    def __init__(self) -> None:
        self.first: dict[str, Record] = {}

    def check(self, record: Record, line: int | None = None) -> list[Problem]:
        key = normalize_question(record.question)
        if key in self.first:
            return [Problem(record.location, f"duplicate of the question at {self.first[key].location}", "warning", "question", line)]
        self.first[key] = record
        return []


def find_leaks(records: list[Record], others: list[Record], other_name: str) -> list[Problem]:
    """Errors for questions that also occur in another file (train/eval leakage)."""
    index: dict[str, Record] = {normalize_question(r.question): r for r in others}
    problems = []
    for record in records:
        match = index.get(normalize_question(record.question))
        if match is not None:
            problems.append(Problem(record.location, f"also in {match.location or other_name} (train/eval leakage)", "error", "question"))
    return problems


def read_dataset(path: str | Path) -> list[Record]:
    """Records of a valid dataset, for training and evaluation.

    Raises:
        DataError: the file has errors; the message lists them all.
    """
    result = load_records(path)
    if result.errors:
        raise problems_error(str(path), result.errors, f"Run `qdtool validate-data {path}` for the full report.")
    return result.records
