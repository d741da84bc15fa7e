"""A problem found in a data file, with its place: what every reader reports instead of raising."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from qdtool.errors import DataError

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    location: str  # "train.jsonl:17", "train.csv:3" (spreadsheet row), "train.json[#3]" or "train.jsonl"
    message: str
    severity: Severity = "error"
    field: str | None = None
    line: int | None = None  # 1-based line (JSONL) or spreadsheet row (CSV/TSV), where known
    column: int | None = None  # 1-based, where known

    def __str__(self) -> str:
        where = self.location if self.column is None else f"{self.location}:{self.column}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None} | {"text": str(self)}


class SplitsProblems:
    """`errors` and `warnings` of a class that keeps its problems in `self.problems`."""

    problems: list[Problem]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]


def problems_error(name: str, problems: list[Problem], footer: str = "") -> DataError:
    """One DataError listing up to 50 problems (errors only), each with its place."""
    errors = [p for p in problems if p.severity == "error"]
    listed = "\n".join(f"  {p}" for p in errors[:50])
    more = f"\n  ... and {len(errors) - 50} more" if len(errors) > 50 else ""
    return DataError(f"{name} has {len(errors)} error(s):\n{listed}{more}" + (f"\n{footer}" if footer else ""))
