"""The JSONL file that `decompose --output` fills: one result per line, appended as each is done.

With metrics.jsonl, one of the two outputs qdtool appends to in place rather than through
core/files.py's temp-and-rename (the line format is core/files.py's `json_line`): results must
reach the disk while generation runs, so that a stopped run (Ctrl-C, a kill, a full disk) keeps
every finished question. Each line is written whole and flushed; a line cut short by a kill is
dropped when the file is opened again, and the same command then skips the questions that are
already there. The file is checked to be writable before any model loads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from qdtool.core.files import ensure_writable_file, json_line, parse_json, write_error
from qdtool.errors import DataError

_RESULT_FIELDS = ("question", "sub_questions", "parse_ok")


def result_key(row: dict[str, Any]) -> str:
    """What identifies a question across runs: its "id" when it has one, else its text."""
    if "id" in row:
        return "id:" + json.dumps(row["id"], sort_keys=True, ensure_ascii=False)
    return "question:" + str(row.get("question"))


class ResultsFile:
    """Results already in `path` (to skip) and an appender for new ones.

    Args:
        overwrite: ignore what `path` holds; it is replaced when the first new result is written
            (not before, so a run that fails to start leaves it as it was).

    Raises:
        UsageError: `path` cannot be written (checked now, before anything long runs).
        DataError: `path` holds something other than decompose results (it is never appended to).
    """

    def __init__(self, path: str | Path, *, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.overwrite = overwrite
        self.written = 0
        self._file: IO[str] | None = None
        ensure_writable_file(self.path)
        self.existing: list[str] = [] if overwrite else self._read_existing()

    def _read_existing(self) -> list[str]:
        if not self.path.is_file():
            return []
        data = self.path.read_bytes()
        if not data:
            return []
        lines = data.split(b"\n")
        torn = lines.pop() if lines[-1] else None  # the last line has no newline: maybe cut by a kill
        keys = []
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            record = self._record(raw)
            if record is None:
                raise DataError(f"{self.path}:{number}: not a decompose result; qdtool appends only to its own results "
                                "(choose another --output, or pass --overwrite to replace this file)")
            keys.append(result_key(record))
        if torn is not None:
            record = self._record(torn)
            with self.path.open("r+b") as f:
                if record is None:  # half a line: drop it, the question is generated again
                    f.truncate(len(data) - len(torn))
                else:
                    f.seek(0, os.SEEK_END)
                    f.write(b"\n")
                    keys.append(result_key(record))
        return keys

    @staticmethod
    def _record(raw: bytes) -> dict[str, Any] | None:
        try:
            record = parse_json(raw)
        except ValueError:  # JSON errors, undecodable bytes, absurd nesting
            return None
        if not isinstance(record, dict) or not all(name in record for name in _RESULT_FIELDS):
            return None
        return record

    def pending(self, rows: Sequence[dict[str, Any]]) -> list[int]:
        """The indices of the rows still to do, in input order (the others are in the file already).

        A question asked twice is done twice: each result in the file accounts for one row.
        """
        left: dict[str, int] = {}
        for key in self.existing:
            left[key] = left.get(key, 0) + 1
        todo = []
        for index, row in enumerate(rows):
            key = result_key(row)
            if left.get(key, 0) > 0:
                left[key] -= 1
            else:
                todo.append(index)
        return todo

    def append(self, record: dict[str, Any]) -> None:
        """Write one result as a whole line and flush it to the operating system."""
        line = json_line(record)
        try:
            if self._file is None:
                self._file = self.path.open("w" if self.overwrite else "a", encoding="utf-8")
            self._file.write(line)
            self._file.flush()
        except OSError as exc:
            raise write_error(exc, self.path, len(line.encode("utf-8"))) from None
        self.written += 1

    def close(self) -> None:
        if self._file is None:
            return
        try:
            os.fsync(self._file.fileno())
        except OSError:
            pass  # the lines are flushed already; fsync only hardens them against power loss
        finally:
            self._file.close()
            self._file = None

    def __enter__(self) -> ResultsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
