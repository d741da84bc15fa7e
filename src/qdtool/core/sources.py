"""Where rows come from: the file's kind by its name, tables' columns checked against the fields
asked for, and the step lists that table cells hold as text.

    .json / .jsonl / .ndjson / .txt / other   core/jsonrows.py (JSON array, JSONL; .txt: one question a line)
    .csv / .tsv                               core/tables.py, at FILE:ROW (spreadsheet rows: header = 1)
    .parquet / .pq                            core/tables.py, at FILE[#INDEX] (index from 0)
    DIR (written by Dataset.save_to_disk)     `datasets.load_from_disk`; a DatasetDict's split: DIR:SPLIT (train by default)
    hf://datasets/NAME[:SPLIT]                `datasets.load_dataset(NAME, split=SPLIT)`, SPLIT train by default
"""

from __future__ import annotations

import ast
import difflib
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from qdtool.core.jsonrows import JsonFile, JsonRow, decode_json, read_json_rows
from qdtool.core.problems import Problem
from qdtool.core.tables import DATA_FILE, plain_value, read_csv_rows, read_parquet_rows
from qdtool.errors import UsageError

HUB_PREFIX = "hf://datasets/"
HUB_SPELLING = "hf://datasets/NAME or hf://datasets/NAME:SPLIT (e.g. hf://datasets/org/name:validation)"
_DELIMITERS = {".csv": ",", ".tsv": "\t"}
_PARQUET = (".parquet", ".pq")
_DATASET_BATCH = 1000  # rows converted to Python at a time from a dataset's memory-mapped Arrow files


def source_kind(path: str | Path) -> str:
    """"hub", "dataset" (a directory), "csv", "tsv", "parquet" or "json" (JSON, JSONL or plain lines), by name alone."""
    spec = str(path)
    if is_hub(spec):
        return "hub"
    if Path(spec).is_dir() or _split_of_dir(spec) is not None:
        return "dataset"
    suffix = Path(spec).suffix.lower()
    if suffix in _DELIMITERS:
        return suffix[1:]
    return "parquet" if suffix in _PARQUET else "json"


def is_hub(spec: str) -> bool:
    # "hf:/datasets/": the same spec after pathlib folded its "//" (a Path was made of it on the way)
    return spec.startswith((HUB_PREFIX, "hf:/datasets/"))


def open_rows(path: str | Path, data: bytes | str | None = None, *, what: str = "records", needs: Sequence[str] = (),
              plain_lines: bool = False) -> JsonFile:
    """The rows of any source, read as they are iterated.

    Args:
        path: a file, a saved dataset's directory, hf://datasets/NAME[:SPLIT], or "-" with `data` (stdin: JSON or lines).
        needs: the columns a table must have (["question", "sub_questions"] for records); a table without
            them gets one problem naming the columns it has, and no rows.

    Raises:
        UsageError: the source is missing, unreadable, not a regular file, or a directory holding no saved dataset.
    """
    if data is not None:
        return read_json_rows(path, data, what=what, plain_lines=plain_lines)
    kind = source_kind(path)
    if kind == "json":
        return read_json_rows(path, what=what, plain_lines=plain_lines)
    if kind == "hub":
        rows = hub_rows(str(path))
    elif kind == "dataset":
        rows = disk_rows(str(path))
    elif kind == "parquet":
        rows = read_parquet_rows(Path(path))
    else:
        rows = read_csv_rows(Path(path), _DELIMITERS["." + kind], kind)
    missing = missing_columns(rows, needs)
    if missing is not None:
        rows.problems.append(missing)
        rows.rows = []
    return rows


# --- Columns


_GUESSES = {
    "question": re.compile(r"^q$|quest|query|prompt|input|text|complex", re.I),
    "sub_questions": re.compile(r"step|decomp|sub|plan|output|target|answer|parts|simple", re.I),
}
_FLAGS = ("--question-field", "--steps-field")


def missing_columns(rows: JsonFile, needs: Sequence[str]) -> Problem | None:
    """`no "question" column; columns found: q, decomp; map them with --question-field q --steps-field decomp`, or None."""
    columns = rows.columns
    if columns is None or not needs:
        return None
    absent = [(flag, wanted) for flag, wanted in zip(_FLAGS, needs, strict=False) if wanted not in columns]
    if not absent:
        return None
    taken = set(needs) & set(columns)
    suggestions = []
    for flag, wanted in absent:
        guess = _guess(wanted, flag, [c for c in columns if c not in taken])
        taken.add(guess)
        suggestions.append(f"{flag} {_shell_word(guess)}")
    found = ", ".join(columns) if columns else "none"
    it = "them" if len(absent) > 1 else "it"
    return Problem(rows.name, f'no "{absent[0][1]}" column; columns found: {found}; map {it} with {" ".join(suggestions)}')


def _guess(wanted: str, flag: str, columns: list[str]) -> str:
    close = difflib.get_close_matches(wanted, columns, n=1, cutoff=0.6)
    if close:
        return close[0]
    pattern = _GUESSES["question" if flag == "--question-field" else "sub_questions"]
    other = _GUESSES["sub_questions" if flag == "--question-field" else "question"]
    likely = [c for c in columns if pattern.search(c) and not other.search(c)] or [c for c in columns if pattern.search(c)]
    return likely[0] if likely else "COLUMN"


def _shell_word(text: str) -> str:
    return text if re.fullmatch(r"[\w.@%+=:,/-]+", text) else "'" + text.replace("'", "'\\''") + "'"


# --- Steps written as text


_NUMBER = re.compile(r"(?:(?<=\s)|^)(\d{1,3})[.)]\s+")  # "1. " or "2) " at the start or after a space, not "#1" or "1990."
_MARK = re.compile(r"^\s*(?:\d{1,3}[.)]|[-*•])\s+")  # a line's own number or bullet
_LITERAL_CHARS = 100_000  # a longer cell is not tried as a JSON or Python list


def split_steps(text: str) -> list[Any]:
    """The steps a table cell holds as text: a JSON (or Python) list, one step a line ("1. ", "- " dropped),
    or one line numbered "1. ... 2. ..."; else the text is one step."""
    stripped = text.strip()
    if stripped.startswith("[") and len(stripped) <= _LITERAL_CHARS:
        listed = _literal_list(stripped)
        if listed is not None:
            return listed
    lines = [line for line in stripped.splitlines() if line.strip()]
    if len(lines) > 1:
        return [_MARK.sub("", line, count=1).strip() for line in lines]
    return _numbered(stripped) or [stripped]


def _literal_list(text: str) -> list[Any] | None:
    """A list written as JSON, or as Python writes one (pandas' to_csv of a list column): ['a?', 'b?']."""
    try:
        value = decode_json(text)
    except Exception:  # noqa: BLE001 - _JsonFault and friends: not JSON, try Python's notation
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return None
    return value if isinstance(value, list) else None


def _numbered(text: str) -> list[str] | None:
    """Steps of "1. A? 2. B?" (numbers 1, 2, 3, ... in order, the first at the start); None if it is not so."""
    marks, expected = [], 1
    for match in _NUMBER.finditer(text):
        if int(match.group(1)) == expected and (expected > 1 or match.start() == 0):
            marks.append(match)
            expected += 1
    if not marks:
        return None
    ends = [m.start() for m in marks[1:]] + [len(text)]
    return [text[m.end():end].strip() for m, end in zip(marks, ends, strict=True)]


# --- Datasets: a directory written by save_to_disk, or the hub


def hub_location(name: str) -> str:
    """What `datasets.load_dataset` is given for hub dataset NAME: NAME itself (tests point it at a local directory)."""
    return name


def parse_hub(spec: str) -> tuple[str, str]:
    """(NAME, SPLIT) of hf://datasets/NAME[:SPLIT]; SPLIT is train when not given.

    Raises:
        UsageError: not spelled so.
    """
    rest = spec.split("datasets/", 1)[1]
    name, colon, split = rest.partition(":")
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name) or (colon and not split):
        raise UsageError(f"{spec}: not a hub dataset; write {HUB_SPELLING}")
    return name, split or "train"


def hub_rows(spec: str) -> JsonFile:
    """The rows of a hub dataset's split, through `datasets.load_dataset` (with HF_HUB_OFFLINE=1: from the cache only).

    Raises:
        UsageError: no such dataset or split, or it cannot be fetched.
    """
    import os

    from datasets import load_dataset
    from datasets.exceptions import DatasetBuildError

    name, split = parse_hub(spec)
    try:
        with _quiet_datasets():
            dataset = load_dataset(hub_location(name), split=split)
    except (ValueError, KeyError) as exc:  # an unknown split names the ones there are
        raise UsageError(f"{spec}: {exc}") from None
    except DatasetBuildError as exc:  # files of the dataset that do not read as one table: the cause says why
        cause = f": {_first_line(exc.__cause__)}" if exc.__cause__ is not None else ""
        raise UsageError(f"{spec}: the hub dataset {name} does not load as one table ({_first_line(exc)}{cause})") from None
    except (OSError, ConnectionError) as exc:  # FileNotFoundError and DatasetNotFoundError among them
        offline = ""
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            offline = ("; HF_HUB_OFFLINE=1 is set, so only datasets already in the cache load: unset it on a machine with network, "
                       "or save the dataset with Dataset.save_to_disk and pass that directory")
        raise UsageError(f"{spec}: cannot load the hub dataset {name} ({_first_line(exc)}){offline}") from None
    return _dataset_rows(dataset, spec, "hub")


def _split_of_dir(spec: str) -> tuple[Path, str] | None:
    """(DIR, SPLIT) for DIR:SPLIT, where DIR is a directory and DIR:SPLIT is not a file."""
    head, sep, split = spec.rpartition(":")
    if not sep or not split or Path(spec).exists() or not Path(head).is_dir():
        return None
    return Path(head), split


def disk_rows(spec: str) -> JsonFile:
    """The rows of a dataset saved with `Dataset.save_to_disk` (or one split of a saved DatasetDict).

    Raises:
        UsageError: the directory holds no saved dataset, or not the split asked for.
    """
    named = _split_of_dir(spec)
    directory, split = named if named else (Path(spec), None)
    if not (directory / "dataset_dict.json").is_file() and not (directory / "state.json").is_file():
        raise UsageError(f"{directory}: is a directory, and not one written by Dataset.save_to_disk (no state.json or "
                         f"dataset_dict.json in it); pass {DATA_FILE}")
    from datasets import Dataset, load_from_disk

    try:
        with _quiet_datasets():
            dataset = load_from_disk(str(directory))
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"{directory}: cannot load the saved dataset ({_first_line(exc)})") from None
    if isinstance(dataset, Dataset):
        if split is not None:
            raise UsageError(f"{spec}: {directory} holds one dataset, not splits; pass {directory}")
        return _dataset_rows(dataset, spec, "dataset")
    splits = sorted(dataset)
    if split is None:  # as for the hub: train, unless there is only one split
        split = splits[0] if len(splits) == 1 else "train" if "train" in splits else None
    if split not in dataset:
        asked = f"has no split {split!r}" if split else "holds several splits"
        example = "train" if "train" in splits else splits[0]
        raise UsageError(f"{directory} {asked} ({', '.join(splits)}); pass one as {directory}:{example}")
    return _dataset_rows(dataset[split], spec, "dataset")


@contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No progress bars from `datasets` on stderr while it loads (core code prints nothing); as it was afterwards."""
    from datasets.utils import logging as datasets_logging

    was_on = datasets_logging.is_progress_bar_enabled()
    datasets_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            datasets_logging.enable_progress_bar()


def _dataset_rows(dataset: Any, name: str, fmt: str) -> JsonFile:
    rows = JsonFile(Path(name), fmt, [], [], name, indexed=True, columns=list(dataset.column_names), split_steps=True)
    rows.rows = _iterate(dataset, name)
    return rows


def _iterate(dataset: Any, name: str) -> Iterator[JsonRow]:
    index = 0
    for batch in dataset.iter(batch_size=_DATASET_BATCH):  # columns of Python values; the Arrow data stays memory-mapped
        keys = list(batch)
        for values in zip(*(batch[k] for k in keys), strict=True):
            yield JsonRow(f"{name}[#{index}]", None, plain_value(dict(zip(keys, values, strict=True))), place=index)
            index += 1


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
