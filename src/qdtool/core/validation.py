"""`validate-data`: check dataset files, find train/eval leakage, and describe the data."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qdtool.core.data import LoadResult, Problem, find_leaks, load_records
from qdtool.core.datastats import DatasetStats, dataset_stats, token_stats
from qdtool.core.modeling import Progress
from qdtool.core.prompts import PromptOptions


@dataclass
class FileReport:
    result: LoadResult
    stats: DatasetStats
    strict: bool = False  # warnings count as errors

    @property
    def ok(self) -> bool:
        return self.result.ok and not (self.strict and self.result.warnings)

    @property
    def failed_by_strict(self) -> bool:
        """Valid data that fails only because --strict counts its warnings."""
        return self.result.ok and not self.ok

    @property
    def reason(self) -> str | None:
        """Why the file failed, in a few words; None when it passed."""
        return None if self.ok else _reason(len(self.result.errors), len(self.result.warnings), self.strict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.result.path),
            "format": self.result.format,
            "valid": self.ok,
            "strict": self.strict,
            "reason": self.reason,
            "records": len(self.result.records),
            "errors": [p.to_dict() for p in self.result.errors],
            "warnings": [p.to_dict() for p in self.result.warnings],
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
        return sum(len(f.result.errors) for f in self.files)

    @property
    def warnings(self) -> int:
        return sum(len(f.result.warnings) for f in self.files)

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
) -> ValidationReport:
    """Check every file, report leakage against `against`, and add token lengths if `model` is given.

    With `strict`, a file with warnings fails: its report says valid false and why.

    Raises:
        UsageError: a file (or an `against` file) is missing or unreadable.
        ModelError: `model` cannot be loaded.
    """
    results = [load_records(p) for p in paths]
    others = [load_records(p) for p in against]
    for result in results:
        for other in others:
            if other.path.resolve() != result.path.resolve():
                result.problems += find_leaks(result.records, other.records, str(other.path))
    tokenizer = None
    if model is not None:
        from qdtool.core.modeling import load_tokenizer

        tokenizer = load_tokenizer(model, trust_remote_code=trust_remote_code, progress=progress)
    report = ValidationReport(strict=strict)
    for result in results:
        stats = dataset_stats(result.records)
        if tokenizer is not None:
            stats.tokens = token_stats(result.records, tokenizer, model, prompt)
        report.files.append(FileReport(result, stats, strict=strict))
    return report


__all__ = ["FileReport", "Problem", "ValidationReport", "validate_data"]
