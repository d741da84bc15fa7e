"""Reading and checking question-decomposition datasets.

Two formats, as the seed tool had them: a JSON array of records, or JSONL (one record per line;
always so for .jsonl files, otherwise a file starting with "[" is read as an array).
A record is `{"question": str, "sub_questions": [str, ...]}`; other fields are kept as they are.
Every problem is collected with its place (`FILE:LINE` for JSONL, `FILE[#INDEX]` for a JSON array,
index from 0), so one run shows all that needs fixing.
"""

from __future__ import annotations

import difflib
import json
import re
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


def _type_name(value: Any) -> str:
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
        return None, [err(f"record must be a JSON object with \"question\" and \"sub_questions\" (got {_type_name(obj)})")]
    problems: list[Problem] = []
    question = obj.get("question")
    if "question" not in obj:
        problems.append(err("missing" + _hint(obj, "question"), "question"))
    elif not isinstance(question, str):
        problems.append(err(f"must be a string (got {_type_name(question)})", "question"))
    elif not question.strip():
        problems.append(err("must not be empty", "question"))

    steps = obj.get("sub_questions")
    if "sub_questions" not in obj:
        problems.append(err("missing" + _hint(obj, "sub_questions"), "sub_questions"))
    elif not isinstance(steps, list) or not steps:
        got = "empty list" if isinstance(steps, list) else _type_name(steps)
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
            problems.append(err(f"step {number} must be a string (got {_type_name(step)})", "sub_questions"))
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
    return f" (found \"{candidates[0]}\": rename it to \"{wanted}\")" if candidates else ""


def load_records(path: str | Path) -> LoadResult:
    """Read a JSON or JSONL dataset, collecting every problem instead of stopping at the first.

    Raises:
        UsageError: the path is missing, a directory, or unreadable.
    """
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such file")
    if path.is_dir():
        raise UsageError(f"{path}: is a directory; pass a .json or .jsonl file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc.strerror})") from exc
    name = str(path)
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    if not raw.strip():
        return LoadResult(path, "unknown", [], [Problem(name, "file is empty; expected JSON records")])
    if path.suffix.lower() not in _JSONL_SUFFIXES and raw.lstrip()[:1] == b"[":
        result = _load_json_array(raw, name)
    else:
        result = _load_jsonl(raw, name)
    result.path = path
    return result


def _utf8_problem(exc: UnicodeDecodeError, raw: bytes, name: str, line_offset: int = 0) -> Problem:
    line = raw.count(b"\n", 0, exc.start) + 1 + line_offset
    column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
    return Problem(f"{name}:{line}", f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {column}); save the file as UTF-8", line=line)


def _json_error(exc: json.JSONDecodeError, location: str, line: int) -> Problem:
    return Problem(location, f"invalid JSON: {exc.msg}", line=line, column=exc.colno)


def _load_json_array(raw: bytes, name: str) -> LoadResult:
    problems: list[Problem] = []
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        problems.append(_utf8_problem(exc, raw, name))
        text = raw.decode("utf-8", errors="replace")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        problems.append(_json_error(exc, f"{name}:{exc.lineno}", exc.lineno))
        return LoadResult(Path(name), "json", [], problems)
    if not isinstance(data, list):  # pragma: no cover - guarded by the leading "["
        problems.append(Problem(name, f"expected a JSON array of records (got {_type_name(data)})"))
        return LoadResult(Path(name), "json", [], problems)
    if not data:
        problems.append(Problem(name, "the array has no records"))
    records: list[Record] = []
    duplicates = _Duplicates()
    for index, obj in enumerate(data):
        record, found = check_record(obj, f"{name}[#{index}]")
        problems += found
        if record is not None:
            records.append(record)
            problems += duplicates.check(record)
    return LoadResult(Path(name), "json", records, problems)


def _load_jsonl(raw: bytes, name: str) -> LoadResult:
    problems: list[Problem] = []
    records: list[Record] = []
    duplicates = _Duplicates()
    lines = raw.split(b"\n")
    for number, line_bytes in enumerate(lines, start=1):
        if not line_bytes.strip():
            continue
        location = f"{name}:{number}"
        try:
            text = line_bytes.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(_utf8_problem(exc, line_bytes, name, number - 1))
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            problems.append(_json_error(exc, location, number))
            if number == 1 and _whole_is_object(raw):
                problems.append(Problem(name, "the file holds one pretty-printed JSON object; write one record per line (JSONL) or a JSON array of records"))
                break
            continue
        record, found = check_record(obj, location, number)
        problems += found
        if record is not None:
            records.append(record)
            problems += duplicates.check(record, number)
    if not records and not problems:
        problems.append(Problem(name, "file has no records"))
    return LoadResult(Path(name), "jsonl", records, problems)


def _whole_is_object(raw: bytes) -> bool:
    try:
        return isinstance(json.loads(raw.decode("utf-8", errors="replace")), dict)
    except json.JSONDecodeError:
        return False


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
        listed = "\n".join(f"  {p}" for p in result.errors[:50])
        more = f"\n  ... and {len(result.errors) - 50} more" if len(result.errors) > 50 else ""
        raise DataError(f"{path} has {len(result.errors)} error(s):\n{listed}{more}\nRun `qdtool validate-data {path}` for the full report.")
    return result.records
