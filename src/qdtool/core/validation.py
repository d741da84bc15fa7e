"""`validate-data`: check dataset files, find train/eval leakage, and describe the data.

Each file streams through once: its records are checked, counted into histograms and tokenized as
they are read, and dropped. What stays per record is a 16-byte digest of its question and the
place it came from (the duplicate check, and the index of each --against file): about 150 bytes a
record. Problems are counted in full but listed up to MAX_LISTED_PROBLEMS per file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qdtool.core.data import DEFAULT_FIELDS, Fields, Problem, RecordSource, iter_records, question_digest
from qdtool.core.datastats import DatasetStats, StatsBuilder, TokenStatsBuilder
from qdtool.core.jsonrows import JsonFile
from qdtool.core.modeling import Progress
from qdtool.core.problems import SplitsProblems
from qdtool.core.prompts import PromptOptions

MAX_LISTED_PROBLEMS = 10_000  # per file; the counts stay exact beyond it


@dataclass
class FileScan(SplitsProblems):
    """What validation keeps of one file: counts, the first MAX_LISTED_PROBLEMS problems, not the records."""

    path: str
    format: str
    records: int = 0  # usable records
    problems: list[Problem] = field(default_factory=list)
    error_count: int = 0
    warning_count: int = 0

    def add(self, problem: Problem) -> None:
        if problem.severity == "error":
            self.error_count += 1
        else:
            self.warning_count += 1
        if len(self.problems) < MAX_LISTED_PROBLEMS:
            self.problems.append(problem)

    @property
    def not_listed(self) -> int:
        """Problems counted but not kept in `problems`."""
        return self.error_count + self.warning_count - len(self.problems)

    @property
    def ok(self) -> bool:
        return self.error_count == 0


@dataclass
class FileReport:
    result: FileScan
    stats: DatasetStats
    strict: bool = False  # warnings count as errors

    @property
    def ok(self) -> bool:
        return self.result.ok and not (self.strict and self.result.warning_count)

    @property
    def failed_by_strict(self) -> bool:
        """Valid data that fails only because --strict counts its warnings."""
        return self.result.ok and not self.ok

    @property
    def reason(self) -> str | None:
        """Why the file failed, in a few words; None when it passed."""
        return None if self.ok else _reason(self.result.error_count, self.result.warning_count, self.strict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.result.path,
            "format": self.result.format,
            "valid": self.ok,
            "strict": self.strict,
            "reason": self.reason,
            "records": self.result.records,
            "errors": [p.to_dict() for p in self.result.errors],
            "warnings": [p.to_dict() for p in self.result.warnings],
            "problems_not_listed": self.result.not_listed,
            "stats": self.stats.to_dict(),
        }


@dataclass
class ValidationReport:
    files: list[FileReport] = field(default_factory=list)
    strict: bool = False

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.files)

    @property
    def errors(self) -> int:
        return sum(f.result.error_count for f in self.files)

    @property
    def warnings(self) -> int:
        return sum(f.result.warning_count for f in self.files)

    @property
    def failed_by_strict(self) -> bool:
        return not self.ok and self.errors == 0

    @property
    def reason(self) -> str | None:
        return None if self.ok else _reason(self.errors, self.warnings, self.strict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "valid": self.ok,
            "strict": self.strict,
            "reason": self.reason,
            "errors": self.errors,
            "warnings": self.warnings,
            "files": [f.to_dict() for f in self.files],
        }


def _reason(errors: int, warnings: int, strict: bool) -> str:
    if not (strict and warnings):
        return f"{errors} error(s)"
    counted = f"{warnings} warning(s) under --strict (warnings count as errors)"
    return f"{errors} error(s), {counted}" if errors else counted


def validate_data(
    paths: Sequence[str | Path],
    *,
    against: Sequence[str | Path] = (),
    model: str | None = None,
    trust_remote_code: bool = False,
    strict: bool = False,
    progress: Progress | None = None,
    prompt: PromptOptions = PromptOptions(),
    fields: Fields = DEFAULT_FIELDS,
) -> ValidationReport:
    """Check every source, report leakage against `against`, and add token lengths if `model` is given.

    With `strict`, a file with warnings fails: its report says valid false and why. `fields` maps
    the question and steps columns, in every file and `against` file alike.

    Raises:
        UsageError: a file (or an `against` file) is missing or unreadable.
        ModelError: `model` cannot be loaded.
    """
    sources = [iter_records(p, fields=fields) for p in paths]  # opened first: a missing file fails before anything loads
    indexes = [_LeakIndex(p, fields) for p in against]
    tokenizer = None
    if model is not None:
        from qdtool.core.modeling import load_tokenizer

        tokenizer = load_tokenizer(model, trust_remote_code=trust_remote_code, progress=progress)
    report = ValidationReport(strict=strict)
    for path, source in zip(paths, sources, strict=True):
        others = [index for index in indexes if index.identity != _identity(path)]  # a file is never compared with itself
        tokens = TokenStatsBuilder(tokenizer, model, prompt) if tokenizer is not None else None
        report.files.append(_scan(source, others, tokens, strict))
    return report


def _scan(source: RecordSource, others: list[_LeakIndex], tokens: TokenStatsBuilder | None, strict: bool) -> FileReport:
    scan = FileScan(source.name, source.format)
    stats = StatsBuilder()
    leaks: list[Problem] = []  # listed after the file's other problems, as they are found after them
    for problem in source.problems:
        scan.add(problem)
    for _, record, found in source:
        for problem in found:
            scan.add(problem)
        if record is None:
            continue
        scan.records += 1
        stats.add(record)
        if tokens is not None:
            tokens.add(record)
        if others:
            digest = question_digest(record.question)
            for other in others:
                place = other.places.get(digest)
                if place is None:
                    continue
                if len(leaks) < MAX_LISTED_PROBLEMS:
                    leaks.append(Problem(record.location, f"also in {other.rows.locate(place)} (train/eval leakage)", "error", "question"))
                else:  # counted, not listed: the list stays bounded
                    scan.error_count += 1
    for leak in leaks:
        scan.add(leak)
    result = stats.result()
    result.tokens = tokens.result() if tokens is not None else None
    return FileReport(scan, result, strict=strict)


class _LeakIndex:
    """The questions of an --against file: digest -> place (the last, where a question repeats).

    Only the question matters here: it is read from the mapped field where the row has one, else
    from "question" (an eval file need not share the training file's column names), and a row
    whose other fields are broken still counts.
    """

    def __init__(self, path: str | Path, fields: Fields) -> None:
        from qdtool.core.sources import open_rows

        self.identity = _identity(path)
        self.rows: JsonFile = open_rows(path, what="records")
        self.places: dict[bytes, int] = {}
        for row in self.rows.rows:
            value = row.value if row.problem is None and isinstance(row.value, dict) else {}
            question = value.get(fields.question, value.get("question"))
            if isinstance(question, str) and question.strip():
                self.places[question_digest(question)] = row.place


def _identity(path: str | Path) -> str:
    from qdtool.core.sources import is_hub

    spec = str(path)
    return spec if is_hub(spec) else str(Path(spec).resolve())


__all__ = ["FileReport", "FileScan", "Problem", "ValidationReport", "validate_data"]
