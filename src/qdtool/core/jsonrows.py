"""The one JSON reader: datasets, `eval --predictions` and `decompose --input` all decode through it,
so hostile input (UTF-16, deep nesting, huge integers, lone surrogates, a FIFO) gets the same
located message everywhere instead of a traceback.

JSONL is read line by line from the open file, never whole, so a file of a million records costs
the memory of one line; a JSON array is read whole (`json.loads` needs all of it).
"""

from __future__ import annotations

import io
import itertools
import json
import os
import re
import stat
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

from qdtool.core.problems import Problem
from qdtool.errors import UsageError

MAX_JSON_DEPTH = 100  # levels of [ and {, the record's own included; no record needs more, and deeper breaks recursive code
# A broken first line may be a whole pretty-printed JSON value: decoded whole for one clear hint only up to this size.
WHOLE_FILE_HINT_BYTES = 16 << 20
JSONL_SUFFIXES = (".jsonl", ".ndjson")  # always one record per line; other files: "[" starts a JSON array
_INT_DIGITS = getattr(sys, "get_int_max_str_digits", lambda: 4300)() or 4300  # Python's int() limit
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # only these escapes can decode to a lone surrogate
SURROGATE = re.compile("[\ud800-\udfff]")
_LONG_INT = re.compile(rf"(?:^|[\[:,])\s*-?(\d{{{_INT_DIGITS + 1},}})")  # a number of more digits than int() reads
_UTF8_BOM = b"\xef\xbb\xbf"
_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16"))


def json_type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


@dataclass(slots=True)
class JsonRow:
    """One record's place in its file, and either its decoded value or the problem that stopped it."""

    location: str
    line: int | None
    value: Any = None
    problem: Problem | None = None
    place: int = 0  # the line (JSONL), spreadsheet row (CSV) or index (arrays, Parquet) that `location` names


@dataclass
class JsonFile:
    path: Path
    format: Literal["json", "jsonl", "lines", "unknown"] | str
    rows: Iterable[JsonRow]  # decoded as they are read, in file order: iterate once
    problems: list[Problem]  # about the file as a whole (empty, UTF-16, an array in a .jsonl), known at once
    name: str = ""  # the file as messages name it ("<stdin>" for "-")
    indexed: bool = False  # places are indexes from 0 (NAME[#INDEX]) rather than lines or rows (NAME:LINE)
    columns: list[str] | None = None  # a table's columns, known before any row (CSV header, Parquet schema, dataset features)
    split_steps: bool = False  # values are table cells: a string of steps is split into steps

    def locate(self, place: int) -> str:
        """The location string of a row's `place`, as its JsonRow.location said it."""
        return f"{self.name}[#{place}]" if self.indexed else f"{self.name}:{place}"


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
    stream = open_regular(Path(path)) if data is None else io.BytesIO(_as_bytes(data))
    result = JsonFile(Path(path), "unknown", [], [], name)
    try:
        streaming = _start(stream, Path(path), result, what, plain_lines)
    except BaseException:
        stream.close()
        raise
    if not streaming:
        stream.close()
    return result


def _start(stream: BinaryIO, path: Path, result: JsonFile, what: str, plain_lines: bool) -> bool:
    """Fill `result` from the head of `stream`; True when its rows still read from the stream."""
    name = result.name
    head = _read(stream, 4, name)
    encoding = wide_encoding(head)
    if encoding:
        result.problems.append(Problem(name, f"file is {encoding}; save it as UTF-8"))
        return False
    skip = len(_UTF8_BOM) if head.startswith(_UTF8_BOM) else 0
    stream.seek(skip)
    lines = _lines(stream, name)
    first = next(((number, line) for number, line in lines if line.strip()), None)
    if first is None:
        result.problems.append(Problem(name, f"file is empty; expected JSON {what}"))
        return False
    opener = first[1].lstrip()[:1]
    if plain_lines and opener not in (b"[", b"{"):
        result.format = "lines"
        result.rows = _plain_lines(itertools.chain([first], lines), name)
        return True
    if path.suffix.lower() not in JSONL_SUFFIXES and opener == b"[":
        result.format, result.indexed = "json", True
        stream.seek(skip)
        _json_array(_read(stream, -1, name), name, what, result)
        return False
    result.format = "jsonl"
    return _json_lines(first, lines, lambda: _reread(stream, path, skip), name, result)


def open_regular(path: Path, kind: str = "a .json or .jsonl file") -> BinaryIO:
    """`path` opened for binary reading, once it is known to be a regular file.

    Raises:
        UsageError: missing, a directory, a FIFO, socket or device (reading one would block or never end), unreadable.
    """
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait forever for a writer.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a directory; pass {kind}") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc.strerror})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise UsageError(f"{path}: is a directory; pass {kind}")
        what = "a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        raise UsageError(f"{path}: is {what}, not a regular file; save the data to a file and pass that")
    return os.fdopen(fd, "rb")


def _read(stream: BinaryIO, size: int, name: str) -> bytes:
    try:
        return stream.read(size)
    except OSError as exc:
        raise UsageError(f"{name}: cannot read ({exc.strerror})") from None


def _lines(stream: BinaryIO, name: str) -> Iterator[tuple[int, bytes]]:
    """(line number, its bytes without the newline) for every line, blank ones too; closes the stream at the end."""
    number = 0
    try:
        for line in stream:
            number += 1
            yield number, line[:-1] if line.endswith(b"\n") else line
    except OSError as exc:
        raise UsageError(f"{name}: cannot read ({exc.strerror})") from None
    finally:
        stream.close()


def _reread(stream: BinaryIO, path: Path, skip: int) -> bytes | None:
    """The whole content again, from a second handle (the first is being read line by line), if small enough for a hint."""
    if isinstance(stream, io.BytesIO):
        raw = stream.getvalue()
        return raw[skip:] if len(raw) <= WHOLE_FILE_HINT_BYTES else None
    with open_regular(path) as again:
        if os.fstat(again.fileno()).st_size > WHOLE_FILE_HINT_BYTES:
            return None
        return again.read()[skip:]


def _as_bytes(data: bytes | str) -> bytes:
    if isinstance(data, bytes):
        return data
    try:  # undecodable stdin bytes arrive as surrogate escapes: take them back to the bytes they were
        return data.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return data.encode("utf-8", "surrogatepass")  # lone surrogates: invalid UTF-8, reported as such


def wide_encoding(head: bytes) -> str | None:
    """UTF-16 or UTF-32 by byte-order mark, or by NUL bytes between ASCII characters (RFC 4627, 3), from a file's first 4 bytes."""
    for bom, encoding in _BOMS:
        if head.startswith(bom):
            return f"{encoding} (it starts with a {encoding} byte-order mark)"
    head = head[:4]
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
        return _JsonFault(_surrogate_message(value, key=False)) if surrogates and type(value) is str and SURROGATE.search(value) else None
    stack: list[tuple[Any, int, str | None]] = [(value, 1, None)]
    while stack:
        item, level, top = stack.pop()
        if level > MAX_JSON_DEPTH:
            return _JsonFault(_TOO_DEEP, field=top)
        pairs = item.items() if type(item) is dict else zip(itertools.repeat(None), item)
        for key, child in pairs:
            if surrogates:
                if key is not None and SURROGATE.search(key):
                    return _JsonFault(_surrogate_message(key, key=True), field=top)
                if type(child) is str and SURROGATE.search(child):
                    return _JsonFault(_surrogate_message(child, key=False), field=top if level > 1 else key)
            if type(child) in (dict, list):
                stack.append((child, level + 1, top if level > 1 else key))
    return None


def _surrogate_message(text: str, key: bool) -> str:
    escape = f"\\u{ord(SURROGATE.search(text).group()):04x}"
    what = f"a key has the escape {escape}, a lone UTF-16 surrogate," if key else f"the escape {escape} is a lone UTF-16 surrogate,"
    return f"{what} not a character; write the character itself, or both halves of its surrogate pair"


def _fault_problem(fault: _JsonFault, text: str, location: str, line: int | None, name: str) -> Problem:
    if fault.index is None:
        return Problem(location, fault.message, field=fault.field, line=line)
    at_line, column = _position(text, fault.index)
    if line is None:  # a whole-file value: the place is the fault's line in the file
        return Problem(f"{name}:{at_line}", fault.message, field=fault.field, line=at_line, column=column)
    return Problem(location, fault.message, field=fault.field, line=line, column=column)


def utf8_problem(exc: UnicodeDecodeError, raw: bytes, name: str, line_offset: int = 0) -> Problem:
    line = raw.count(b"\n", 0, exc.start) + 1 + line_offset
    column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
    return Problem(f"{name}:{line}", f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {column}); save the file as UTF-8", line=line)


def _json_array(raw: bytes, name: str, what: str, result: JsonFile) -> None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        result.problems.append(utf8_problem(exc, raw, name))
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
            yield JsonRow(location, None, problem=Problem(location, fault.message, field=fault.field), place=index)
        else:
            yield JsonRow(location, None, item, place=index)


def _json_lines(first: tuple[int, bytes], lines: Iterator[tuple[int, bytes]], reread: Callable[[], bytes | None], name: str,
                result: JsonFile) -> bool:
    """JSONL rows, unless the file is one JSON value spread over lines (then one hint instead)."""
    head = _json_line(first[1], first[0], name)
    records_array = head.problem is None and isinstance(head.value, list) and head.value and all(isinstance(x, dict) for x in head.value)
    if head.problem is None and not records_array:  # the usual case: decide from the first line alone
        result.rows = itertools.chain([head], _json_line_rows(lines, name))
        return True
    if records_array:  # an array of records alone on its line is a misnamed file; followed by more lines it is a record
        second = next(((number, line) for number, line in lines if line.strip()), None)
        if second is not None:
            result.rows = itertools.chain([head], _json_line_rows(itertools.chain([second], lines), name))
            return True
        whole, spread = head.value, 1
    else:  # the first line does not parse: the file may be one JSON value over several lines
        whole, spread = _whole_value(reread())
    hint = _whole_file_hint(whole, spread, name)
    if hint is not None:
        result.problems.append(hint)
        return False
    result.rows = itertools.chain([head], _json_line_rows(lines, name))
    return True


def _whole_value(raw: bytes | None) -> tuple[Any, int]:
    """The file decoded as one JSON value (None if it is not one, or too big to try) and its non-blank lines."""
    if raw is None:
        return None, 0
    try:
        whole = decode_json(raw.decode("utf-8"))
    except (_JsonFault, UnicodeDecodeError):
        return None, 0
    return whole, sum(1 for line in raw.split(b"\n") if line.strip())


def _json_line_rows(lines: Iterable[tuple[int, bytes]], name: str) -> Iterator[JsonRow]:
    for number, line in lines:
        if line.strip():
            yield _json_line(line, number, name)


def _json_line(line_bytes: bytes, number: int, name: str) -> JsonRow:
    row = JsonRow(f"{name}:{number}", number, place=number)
    try:
        text = line_bytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        row.problem = utf8_problem(exc, line_bytes, name, number - 1)
        return row
    try:
        row.value = decode_json(text)
    except _JsonFault as fault:
        row.problem = _fault_problem(fault, text, row.location, number, name)
    return row


def _whole_file_hint(whole: Any, spread: int, name: str) -> Problem | None:
    """One clear problem for a whole JSON object or array where one record per line was expected."""
    over = f" over {spread} lines" if spread > 1 else ""
    if isinstance(whole, dict):
        return Problem(f"{name}:1", f"the file holds one JSON object{over}; write one record per line (JSONL) or a JSON array of records",
                       line=1)
    if isinstance(whole, list):  # only a .jsonl file starting with "[" is read line by line
        return Problem(f"{name}:1", f"the file holds a JSON array{over}, but a .jsonl file has one record per line; "
                       "rename the file to .json, or write one record per line", line=1)
    return None


def _plain_lines(lines: Iterable[tuple[int, bytes]], name: str) -> Iterator[JsonRow]:
    for number, line_bytes in lines:
        if not line_bytes.strip():
            continue
        row = JsonRow(f"{name}:{number}", number, place=number)
        try:
            row.value = line_bytes.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            row.problem = utf8_problem(exc, line_bytes, name, number - 1)
        yield row
