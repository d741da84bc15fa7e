"""`validate-data`: check dataset files, find train/eval leakage, and describe the data."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from qdtool.core.data import LoadResult, Problem, find_leaks, load_records
from qdtool.core.datastats import DatasetStats, dataset_stats, token_stats
from qdtool.core.modeling import Progress


@dataclass
class FileReport:
    result: LoadResult
    stats: DatasetStats

    @property
    def ok(self) -> bool:
        return self.result.ok

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.result.path),
            "format": self.result.format,
            "valid": self.ok,
            "records": len(self.result.records),
            "errors": [p.to_dict() for p in self.result.errors],
            "warnings": [p.to_dict() for p in self.result.warnings],
            "stats": self.stats.to_dict(),
        }


@dataclass
class ValidationReport:
    files: list[FileReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {
            "valid": self.ok,
            "errors": sum(len(f.result.errors) for f in self.files),
            "warnings": sum(len(f.result.warnings) for f in self.files),
            "files": [f.to_dict() for f in self.files],
        }


def validate_data(
    paths: Sequence[str | Path],
    *,
    against: Sequence[str | Path] = (),
    model: str | None = None,
    trust_remote_code: bool = False,
    progress: Progress | None = None,
    **prompt_options: Any,
) -> ValidationReport:
    """Check every file, report leakage against `against`, and add token lengths if `model` is given.

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
    report = ValidationReport()
    for result in results:
        stats = dataset_stats(result.records)
        if tokenizer is not None:
            stats.tokens = token_stats(result.records, tokenizer, model, **prompt_options)
        report.files.append(FileReport(result, stats))
    return report


__all__ = ["FileReport", "Problem", "ValidationReport", "validate_data"]
