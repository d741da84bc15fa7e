"""Reading and checking question-decomposition datasets.

A record is `{"question": str, "sub_questions": [str, ...]}`; other fields are kept as they are.
Records come from JSON (an array of records), JSONL (one per line), CSV/TSV, Parquet, a directory
written by `Dataset.save_to_disk`, or a hub dataset (`hf://datasets/NAME[:SPLIT]`): see
core/sources.py. `Fields` maps other column names onto the two fields. Every problem is collected
with its place (`FILE:LINE` for JSONL, `FILE:ROW` for CSV/TSV with the spreadsheet's row numbers,
`FILE[#INDEX]` for a JSON array, Parquet or a dataset, index from 0), so one run shows all that
needs fixing.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qdtool.core.jsonrows import MAX_JSON_DEPTH, JsonFile, JsonRow, decode_json, json_type_name, read_json_rows
from qdtool.core.problems import Problem, Severity, SplitsProblems, problems_error

LONG_RECORD_CHARS = 2000  # question + steps; such samples rarely fit a short max_seq_len
_REF = re.compile(r"#(\d+)")
_FIELD_ALIASES = ("subquestions", "sub-questions", "decomposition", "steps", "questions", "subqs", "sub_question")


@dataclass(frozen=True)
class Fields:
    """Which field (column) holds the question and which the steps; the defaults are the record's own names."""

    question: str = "question"
    steps: str = "sub_questions"

    @classmethod
    def of(cls, question: str | None = None, steps: str | None = None) -> Fields:
        """None means the default name."""
        return cls(question or "question", steps or "sub_questions")

    @property
    def mapped(self) -> bool:
        return (self.question, self.steps) != ("question", "sub_questions")


DEFAULT_FIELDS = Fields()


@dataclass
class Record:
    question: str
    sub_questions: list[str]
    extra: dict[str, Any] = field(default_factory=dict)  # every other field, kept as given
    location: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"question": self.question, "sub_questions": list(self.sub_questions), **self.extra}


@dataclass
class LoadResult(SplitsProblems):
    path: Path
    format: str  # "json", "jsonl", "csv", "tsv", "parquet", "dataset", "hub", or "unknown"
    records: list[Record]
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        return not self.errors


def normalize_question(text: str) -> str:
    """The key under which two questions count as the same (case and spacing ignored)."""
    return " ".join(text.casefold().split())


def question_digest(text: str) -> bytes:
    """16 bytes that stand for the normalised question: what duplicate and leak checks keep of each question
    (a blake2b digest; two different questions share one with a chance of about 1 in 10^29 per pair)."""
    return hashlib.blake2b(normalize_question(text).encode("utf-8", "surrogatepass"), digest_size=16).digest()


def check_record(obj: Any, location: str, line: int | None = None, *, fields: Fields = DEFAULT_FIELDS,
                 split_steps: bool = False) -> tuple[Record | None, list[Problem]]:
    """Validate one decoded record. Returns the record (None if unusable) and its problems.

    Args:
        fields: the names of the question and steps fields in `obj`; messages name them so.
        split_steps: a string of steps is split into steps (by lines, or "1. ... 2. ..."), as table
            cells hold them; without it a string is an error, as in JSON records.
    """

    def err(message: str, fld: str | None = None, severity: Severity = "error") -> Problem:
        return Problem(location, message, severity, fld, line)

    if not isinstance(obj, dict):
        return None, [err(f"record must be a JSON object with \"question\" and \"sub_questions\" (got {json_type_name(obj)})")]
    qname, sname = fields.question, fields.steps
    problems: list[Problem] = []
    question = obj.get(qname)
    if qname not in obj:
        problems.append(err("missing" + _hint(obj, qname, fields), qname))
    elif not isinstance(question, str):
        problems.append(err(f"must be a string (got {json_type_name(question)})", qname))
    elif not question.strip():
        problems.append(err("must not be empty", qname))

    steps = obj.get(sname)
    if split_steps and isinstance(steps, str):
        from qdtool.core.sources import split_steps as split

        steps = split(steps) if steps.strip() else steps
    if sname not in obj:
        problems.append(err("missing" + _hint(obj, sname, fields), sname))
    elif split_steps and isinstance(steps, str):  # a blank cell
        problems.append(err("must not be empty", sname))
    elif not isinstance(steps, list) or not steps:
        got = "empty list" if isinstance(steps, list) else json_type_name(steps)
        problems.append(err(f"must be a non-empty list of strings (got {got})", sname))
    else:
        problems += _check_steps(steps, question if isinstance(question, str) else None, lambda m, s="error": err(m, sname, s))

    if any(p.severity == "error" for p in problems):
        return None, problems
    total_chars = len(question) + sum(len(s) for s in steps)
    if total_chars > LONG_RECORD_CHARS:
        problems.append(err(f"very long record ({total_chars:,} characters); it may not fit max_seq_len", severity="warning"))
    # A mapped record's own "question"/"sub_questions" columns would overwrite the mapped ones in to_dict().
    shadowed = {qname, sname, "question", "sub_questions"}
    extra = {k: v for k, v in obj.items() if k not in shadowed}
    return Record(question, list(steps), extra, location), problems


def _check_steps(steps: list[Any], question: str | None, err) -> list[Problem]:
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    qkey = normalize_question(question) if question else None
    for number, step in enumerate(steps, start=1):
        if not isinstance(step, str):
            problems.append(err(f"step {number} must be a string (got {json_type_name(step)})"))
            continue
        if not step.strip():
            problems.append(err(f"step {number} is blank"))
            continue
        key = normalize_question(step)
        if key == qkey:
            problems.append(err(f"step {number} is identical to the question"))
        for ref in sorted({int(m) for m in _REF.findall(step)}):
            if not 1 <= ref < number:
                if number == 1:
                    why = "but the first step has no earlier answer to refer to"
                else:
                    why = f"which is not an earlier step (step {number} may use #1 to #{number - 1})"
                problems.append(err(f"step {number} refers to #{ref}, {why}"))
        if key in seen:
            problems.append(err(f"step {number} repeats step {seen[key]}", "warning"))
        seen.setdefault(key, number)
    if len(steps) == 1 and not problems:
        problems.append(err("only one step; a decomposition usually has two or more", "warning"))
    return problems


def _hint(obj: dict[str, Any], wanted: str, fields: Fields) -> str:
    keys = [k for k in obj if isinstance(k, str) and k not in (fields.question, fields.steps)]
    candidates = difflib.get_close_matches(wanted, keys, n=1, cutoff=0.6)
    if not candidates and wanted == "sub_questions":
        candidates = [k for k in keys if k.lower() in _FIELD_ALIASES]
    if not candidates:
        return ""
    # json.dumps: a key with control characters must not reach the terminal raw
    found = json.dumps(candidates[0], ensure_ascii=False)
    if fields.mapped or wanted not in ("question", "sub_questions"):
        flag = "--question-field" if wanted == fields.question else "--steps-field"
        return f" (found {found}: map it with {flag} {found})"
    return f" (found {found}: rename it to \"{wanted}\")"


@dataclass
class RecordSource:
    """The records of one source as they are read: file-level problems at once, then each row's
    record (None if unusable) with its problems, duplicate warnings included. Iterate once."""

    rows: JsonFile
    fields: Fields = DEFAULT_FIELDS

    @property
    def name(self) -> str:
        return self.rows.name

    @property
    def format(self) -> str:
        return self.rows.format

    @property
    def problems(self) -> list[Problem]:
        return self.rows.problems

    def __iter__(self) -> Iterator[tuple[JsonRow, Record | None, list[Problem]]]:
        duplicates = Duplicates(self.rows)
        split = self.rows.split_steps or self.fields.steps != DEFAULT_FIELDS.steps
        for row in self.rows.rows:
            if row.problem is not None:
                yield row, None, [row.problem]
                continue
            record, found = check_record(row.value, row.location, row.line, fields=self.fields, split_steps=split)
            if record is not None:
                found += duplicates.check(record, row)
            yield row, record, found


def iter_records(path: str | Path, *, fields: Fields = DEFAULT_FIELDS) -> RecordSource:
    """The records of any supported source (see core/sources.py), read as they are iterated.

    Raises:
        UsageError: the source is missing, a directory that holds no saved dataset, not a regular file, or unreadable.
    """
    from qdtool.core.sources import open_rows

    return RecordSource(open_rows(path, what="records", needs=(fields.question, fields.steps)), fields)


def load_records(path: str | Path, *, fields: Fields = DEFAULT_FIELDS) -> LoadResult:
    """Read a dataset whole, collecting every problem instead of stopping at the first.

    Raises:
        UsageError: the path is missing, a directory, not a regular file, or unreadable.
    """
    source = iter_records(path, fields=fields)
    problems = list(source.problems)
    records: list[Record] = []
    for _, record, found in source:
        problems += found
        if record is not None:
            records.append(record)
    return LoadResult(source.rows.path, source.format, records, problems)  # never "lines": plain_lines is off


class Duplicates:
    """Warns, in file order, when a question was already seen earlier in the same source.

    Keeps a 16-byte digest of each question and the place (line, row or index) where it first came:
    about 150 bytes a record, not the records.
    """

    def __init__(self, source: JsonFile) -> None:
        self.source = source
        self.first: dict[bytes, int] = {}

    def check(self, record: Record, row: JsonRow) -> list[Problem]:
        key = question_digest(record.question)
        place = self.first.setdefault(key, row.place)
        if place != row.place:
            return [Problem(record.location, f"duplicate of the question at {self.source.locate(place)}", "warning", "question", row.line)]
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


def read_dataset(path: str | Path, *, fields: Fields = DEFAULT_FIELDS) -> list[Record]:
    """Records of a valid dataset, for training and evaluation.

    Raises:
        DataError: the source has errors; the message lists them all.
    """
    result = load_records(path, fields=fields)
    if result.errors:
        flags = "".join(f" --{flag}-field {value}" for flag, value, default in
                        (("question", fields.question, "question"), ("steps", fields.steps, "sub_questions")) if value != default)
        raise problems_error(str(path), result.errors, f"Run `qdtool validate-data {path}{flags}` for the full report.")
    return result.records


__all__ = ["DEFAULT_FIELDS", "MAX_JSON_DEPTH", "Duplicates", "Fields", "JsonFile", "JsonRow", "LoadResult", "Problem", "Record",
           "RecordSource", "Severity", "check_record", "decode_json", "find_leaks", "iter_records", "json_type_name", "load_records",
           "normalize_question", "problems_error", "question_digest", "read_dataset", "read_json_rows"]
