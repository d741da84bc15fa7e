"""The two files synth fills: FILE.jsonl (kept records) and FILE.dropped.jsonl (dropped questions, with the reason).

Both are appended record by record, each line flushed and fsynced, so a kill loses only the
questions in flight. Opening them reads what they hold (the questions to skip on a rerun) and
repairs a last line that a kill cut short: a line that still parses as a whole record only lacks
its newline, which is added; half a record is cut off, and its question is asked again. A line in
the middle that is not one of ours means the file is someone else's: it is never appended to.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from qdtool.core.files import ensure_writable_file, json_line, parse_json, write_error, write_text_atomic
from qdtool.core.results import result_key
from qdtool.errors import DataError

_KEPT_FIELDS = ("question", "sub_questions")
_DROPPED_FIELDS = ("question", "reason")


def dropped_path(out: str | Path) -> Path:
    """FILE.dropped.jsonl beside FILE.jsonl (FILE.dropped.jsonl beside FILE for any other name)."""
    out = Path(out)
    stem = out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.name
    return out.with_name(f"{stem}.dropped.jsonl")


class _Appender:
    """One JSONL file: its records' keys on open (torn last line repaired) and a durable append."""

    def __init__(self, path: Path, fields: tuple[str, ...], what: str, readonly: bool = False) -> None:
        self.path, self.fields, self.what, self.readonly = path, fields, what, readonly
        self.repaired = False  # a torn last line was found (and, unless readonly, repaired) on open
        self._file: IO[str] | None = None
        if not readonly:
            ensure_writable_file(path)
        self.records = self._read()

    def _read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        torn = lines.pop()  # b"" when the file ends with a newline (or is empty)
        records = []
        for number, raw in enumerate(lines, start=1):
            if raw.strip():
                record = self._record(raw)
                if record is None:
                    raise DataError(f"{self.path}:{number}: not a {self.what} record; synth appends only to its own output "
                                    "(choose another --out)")
                records.append(record)
        if torn.strip():
            self.repaired = True
            record = self._record(torn)
            if self.readonly:
                return records + ([record] if record is not None else [])
            with self.path.open("r+b") as f:
                if record is None:  # half a record: cut it off; its question is asked again
                    f.truncate(len(data) - len(torn))
                else:  # a whole record that lacks only its newline
                    f.seek(0, os.SEEK_END)
                    f.write(b"\n")
                    records.append(record)
                f.flush()
                os.fsync(f.fileno())
        return records

    def _record(self, raw: bytes) -> dict[str, Any] | None:
        try:
            record = parse_json(raw)
        except ValueError:
            return None
        return record if isinstance(record, dict) and all(name in record for name in self.fields) else None

    def append(self, record: dict[str, Any]) -> None:
        line = json_line(record)
        try:
            if self._file is None:
                self._file = self.path.open("a", encoding="utf-8")
            self._file.write(line)
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            raise write_error(exc, self.path, len(line.encode("utf-8"))) from None

    def rewrite(self, records: Iterable[dict[str, Any]]) -> None:
        """Replace the file's content with `records`, atomically."""
        self.close()
        self.records = list(records)
        write_text_atomic(self.path, "".join(json_line(r) for r in self.records))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class SynthOutput:
    """FILE.jsonl and FILE.dropped.jsonl: what is done already, and where each new outcome goes.

    `readonly` (for --dry-run): nothing is written or repaired, and the files need not be writable.

    Raises:
        UsageError: a file cannot be written (checked now, before any teacher is asked).
        DataError: a file holds lines that are not synth's records.
    """

    def __init__(self, out: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(out)
        self.kept = _Appender(self.path, _KEPT_FIELDS, "synth output", readonly)
        self.dropped = _Appender(dropped_path(self.path), _DROPPED_FIELDS, "dropped-question", readonly)

    @property
    def repaired(self) -> list[Path]:
        """The files whose torn last line was repaired on open."""
        return [a.path for a in (self.kept, self.dropped) if a.repaired]

    def done_keys(self, *, retry_dropped: bool = False) -> set[str]:
        """Keys (`results.result_key`) of the questions not to ask again: kept ones, and dropped ones unless `retry_dropped`."""
        keys = {result_key(r) for r in self.kept.records}
        if not retry_dropped:
            keys |= {result_key(r) for r in self.dropped.records}
        return keys

    def forget_dropped(self, keys: set[str]) -> int:
        """Remove the dropped records with these keys (they are asked again); returns how many went."""
        left = [r for r in self.dropped.records if result_key(r) not in keys]
        gone = len(self.dropped.records) - len(left)
        if gone:
            self.dropped.rewrite(left)
        return gone

    def keep(self, record: dict[str, Any]) -> None:
        self.kept.append(record)

    def drop(self, record: dict[str, Any]) -> None:
        self.dropped.append(record)

    def close(self) -> None:
        self.kept.close()
        self.dropped.close()

    def __enter__(self) -> SynthOutput:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
