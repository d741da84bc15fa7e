"""Every file and directory qdtool writes goes through here: atomically, or not at all.

Rules (docs/design.md, "Files"):
- A file is written to a hidden temp file beside it, flushed, then renamed over the target, so a
  reader sees the old content or the new, never half.
- A directory is built in a hidden temp dir beside it (`.tmp-NAME-PID-RAND`), then swapped in: the
  old one is renamed aside, the new one renamed into place, the old one removed. A kill leaves
  either the old directory or the new one, plus a temp dir that the next write removes.
- A write that fails (disk full, read-only, no permission) removes its partial output and raises a
  QdtoolError that says where, why, and how much space the write needed when known.
- qdtool's own JSON files (run_summary.json, trainer_state.json, metrics.jsonl, ...) are read and
  written by the functions below, in one format: UTF-8, no \\u escapes, one value per line in JSONL.
  What a user gives (training data) is read by core/data.py instead, with located data errors.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from qdtool.errors import QdtoolError, UsageError

_TMP_PREFIX = ".tmp-"
_OLD_PREFIX = ".old-"


class WriteError(QdtoolError):
    """The file system refused a write (full, read-only, no permission)."""


class DamagedFileError(QdtoolError):
    """One of qdtool's own files is not valid JSON (cut short, edited, or another program's); its cause is the parse error."""


def tree_size(path: Path) -> int:
    """Bytes under `path` (0 when it does not exist)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def write_error(exc: OSError, path: Path, needed_bytes: int | None = None) -> QdtoolError:
    """A located, actionable error for an OSError raised while writing `path`."""
    code = getattr(exc, "errno", None)
    if code == errno.ENOSPC or code == errno.EDQUOT:
        free = _free_bytes(path)
        need = f"; it needs about {_size(needed_bytes)}" if needed_bytes else ""
        have = f", {_size(free)} free" if free is not None else ""
        return WriteError(f"no space left on the device holding {path}{have}{need}; free some space or write elsewhere")
    if code == errno.EROFS:
        return WriteError(f"cannot write {path}: the file system is read-only; choose an output on a writable disk")
    if code in (errno.EACCES, errno.EPERM):
        return WriteError(f"cannot write {path}: permission denied; choose a directory you can write to")
    return WriteError(f"cannot write {path}: {exc.strerror or exc}")


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _free_bytes(path: Path) -> int | None:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None


def ensure_writable_dir(directory: Path) -> None:
    """Fail now, before any long work, if files cannot be created in `directory` (created if missing).

    Raises:
        UsageError: the directory (or a parent) is read-only, not writable, or is a file.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"{directory} exists and is not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".qdtool-write-check-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(str(write_error(exc, directory))) from None


def ensure_writable_file(path: Path) -> None:
    """Fail now if `path` cannot be written (its directory is checked; an existing file must be writable)."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path} is a directory; give a file path")
    ensure_writable_dir(path.parent if str(path.parent) else Path("."))
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"cannot write {path}: permission denied")


def write_text_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` (UTF-8) so that no reader ever sees a partial file."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f"{_TMP_PREFIX}{path.name}-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise write_error(exc, path, len(data)) from None


def dump_json(value: Any, *, sort_keys: bool = False) -> str:
    """`value` as qdtool writes a JSON file: indented, UTF-8 characters as they are, a final newline."""
    return json.dumps(value, indent=2, sort_keys=sort_keys, ensure_ascii=False) + "\n"


def write_json_atomic(path: Path, value: Any, *, sort_keys: bool = False) -> None:
    """Replace `path` with `value` as JSON (see `dump_json`), atomically."""
    write_text_atomic(path, dump_json(value, sort_keys=sort_keys))


def read_json(path: Path, default: Any = ...) -> Any:
    """The value in one of qdtool's own JSON files; `default` (when given) if there is no such file.

    Raises:
        DamagedFileError: the file is not valid UTF-8 JSON.
        OSError: it cannot be read (or is missing, without `default`).
    """
    path = Path(path)
    try:
        return parse_json(path.read_bytes())
    except FileNotFoundError:
        if default is ...:
            raise
        return default
    except ValueError as exc:
        raise DamagedFileError(f"{path} is not valid JSON ({str(exc)[:200]}): it was cut short, edited, or is not qdtool's") from exc


def parse_json(raw: bytes | str) -> Any:
    """One JSON document or JSONL line. Raises ValueError (bad UTF-8, bad JSON, absurd nesting)."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def json_line(value: Any) -> str:
    """`value` as one JSONL line, newline included."""
    return json.dumps(value, ensure_ascii=False) + "\n"


def read_json_lines(path: Path) -> list[Any]:
    """The values of a JSONL file that qdtool appends to, skipping blank lines and lines that are not JSON
    (the last one may be cut short by a kill); [] when there is no file."""
    try:
        lines = Path(path).read_bytes().splitlines()
    except FileNotFoundError:
        return []
    values = []
    for line in lines:
        try:
            values.append(parse_json(line))
        except ValueError:
            continue
    return values


def append_json_line(path: Path, value: Any) -> None:
    """Append `value` as one whole line (a kill leaves at most a torn last line, which `read_json_lines` skips)."""
    line = json_line(value)
    try:
        with Path(path).open("a", encoding="utf-8") as f:
            f.write(line)
    except OSError as exc:
        raise write_error(exc, Path(path), len(line.encode("utf-8"))) from None


def remove_stale_temps(parent: Path, name: str | None = None) -> None:
    """Remove temp and set-aside dirs that a killed write of `parent/name` (of anything in `parent`
    when `name` is None) left behind."""
    if not parent.is_dir():
        return
    prefixes = (_TMP_PREFIX, _OLD_PREFIX) if name is None else (f"{_TMP_PREFIX}{name}-", f"{_OLD_PREFIX}{name}-")
    for stale in parent.iterdir():
        if stale.name.startswith(prefixes):
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


@contextmanager
def atomic_dir(final: Path, *, needed_bytes: int | None = None) -> Iterator[Path]:
    """Yield an empty temp dir beside `final`; on success it replaces `final`, on any error it is removed.

    The old `final` (if any) survives until the new one is complete, so a kill at any point leaves
    a whole directory at `final`: the old one or the new one.

    Raises:
        WriteError: the file system refused a write (the message names the cause and the space needed).
    """
    final = Path(final)
    remove_stale_temps(final.parent, final.name)
    tmp = final.parent / f"{_TMP_PREFIX}{final.name}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as exc:
        raise write_error(exc, final, needed_bytes) from None
    try:
        yield tmp
        _swap_in(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_error(exc, final, needed_bytes) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(tmp: Path, final: Path) -> None:
    if not final.exists():
        os.rename(tmp, final)
        return
    old = final.parent / f"{_OLD_PREFIX}{final.name}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    os.rename(final, old)
    try:
        os.rename(tmp, final)
    except OSError:
        os.rename(old, final)  # put the old one back: never leave nothing at `final`
        raise
    shutil.rmtree(old, ignore_errors=True)
