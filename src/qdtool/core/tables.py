"""CSV/TSV and Parquet files as rows of {column: value}, streamed, each with its place.

CSV/TSV go through Python's csv module rather than `datasets` or pyarrow's CSV reader: it reads one
record at a time from the open file (bounded memory) and knows exactly which record it is on, so a
problem is at `FILE:ROW`, ROW as a spreadsheet numbers it (the header is row 1, the first record
row 2). Parquet goes through pyarrow (which `datasets` is built on) batch by batch
(`ParquetFile.iter_batches`), at `FILE[#INDEX]`, the index from 0 that pandas and `datasets` give.
"""

from __future__ import annotations

import csv
import datetime
import decimal
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from qdtool.core.jsonrows import SURROGATE, JsonFile, JsonRow, open_regular, wide_encoding
from qdtool.core.problems import Problem

PARQUET_BATCH = 1024  # rows decoded at a time
DATA_FILE = "a data file (.json, .jsonl, .csv, .tsv, .parquet) or a directory written by Dataset.save_to_disk"


def read_csv_rows(path: Path, delimiter: str, fmt: str) -> JsonFile:
    """The records of a CSV (`delimiter` ",") or TSV ("\\t") file with a header row.

    Raises:
        UsageError: the path is missing, a directory, not a regular file, or unreadable.
    """
    name = str(path)
    raw = open_regular(path, DATA_FILE)
    result = JsonFile(path, fmt, [], [], name, split_steps=True)
    encoding = wide_encoding(raw.read(4))
    if encoding:
        raw.close()
        result.problems.append(Problem(name, f"file is {encoding}; save it as UTF-8"))
        return result
    raw.seek(0)
    # surrogateescape: an undecodable byte becomes a lone surrogate in its cell, reported at its row, instead of stopping the read
    text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")
    reader = csv.reader(text, delimiter=delimiter)
    header, row_number = _header(reader, name, result)
    if header is None:
        text.close()
        return result
    result.columns = [c for c in header if c]
    result.rows = _csv_rows(reader, text, header, row_number, name)
    return result


def _header(reader: Any, name: str, result: JsonFile) -> tuple[list[str] | None, int]:
    """The header (the first row that is not blank) and its row number; None after a file-level problem."""
    number = 0
    try:
        for cells in reader:
            number += 1
            if any(c.strip() for c in cells):
                break
        else:
            result.problems.append(Problem(name, "file is empty; expected a header row naming the columns, then one record per row"))
            return None, number
    except csv.Error as exc:
        result.problems.append(Problem(f"{name}:{number + 1}", f"not valid CSV ({exc})", line=number + 1))
        return None, number
    header = [c.strip() for c in cells]
    if any(SURROGATE.search(c) for c in header):
        result.problems.append(Problem(f"{name}:{number}", "not valid UTF-8; save the file as UTF-8", line=number))
        return None, number
    repeated = sorted({c for c in header if c and header.count(c) > 1})
    if repeated:
        result.problems.append(Problem(f"{name}:{number}", f"the header names {', '.join(map(repr, repeated))} more than once; "
                                       "give every column its own name", line=number))
        return None, number
    return header, number


def _csv_rows(reader: Any, text: io.TextIOWrapper, header: list[str], number: int, name: str) -> Iterator[JsonRow]:
    try:
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:  # the reader's state after this is unknown: stop here, with the place
                location = f"{name}:{number + 1}"
                yield JsonRow(location, number + 1, problem=Problem(location, f"not valid CSV ({exc}); rows after it were not read",
                                                                   line=number + 1), place=number + 1)
                return
            number += 1
            if cells and any(c.strip() for c in cells):
                yield _csv_row(cells, header, number, name)
    finally:
        text.close()


def _csv_row(cells: list[str], header: list[str], number: int, name: str) -> JsonRow:
    location = f"{name}:{number}"
    row = JsonRow(location, number, place=number)
    if len(cells) != len(header):
        row.problem = Problem(location, f"has {len(cells)} cell(s), but the header has {len(header)} column(s); "
                              "quote a cell that holds the delimiter", line=number)
    elif any(SURROGATE.search(c) for c in cells):
        row.problem = Problem(location, "not valid UTF-8; save the file as UTF-8", line=number)
    else:
        row.value = {column: cell for column, cell in zip(header, cells, strict=True) if column}
    return row


def read_parquet_rows(path: Path) -> JsonFile:
    """The records of a Parquet file, batch by batch.

    Raises:
        UsageError: the path is missing, a directory, not a regular file, or unreadable.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = str(path)
    handle = open_regular(path, DATA_FILE)
    result = JsonFile(path, "parquet", [], [], name, indexed=True, split_steps=True)
    try:
        # pre_buffer off, a 1 MiB read buffer and one thread: pages are decoded as the batches need them, instead of a whole
        # row group's columns read ahead (with 100k-row groups, 1M records peaked at 180 MiB RSS that way, 110 MiB this way)
        parquet = pq.ParquetFile(handle, pre_buffer=False, buffer_size=1 << 20)
    except (pa.ArrowException, OSError) as exc:
        handle.close()
        result.problems.append(Problem(name, f"not a Parquet file ({exc})"))
        return result
    result.columns = list(parquet.schema_arrow.names)
    repeated = sorted({c for c in result.columns if result.columns.count(c) > 1})
    if repeated:
        handle.close()
        result.problems.append(Problem(name, f"the columns {', '.join(map(repr, repeated))} appear more than once; give each its own name"))
        return result
    result.rows = _parquet_rows(parquet, handle, name)
    return result


def _parquet_rows(parquet: Any, handle: BinaryIO, name: str) -> Iterator[JsonRow]:
    import pyarrow as pa

    index = 0
    try:
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH, use_threads=False):
            for value in batch.to_pylist():
                yield JsonRow(f"{name}[#{index}]", None, plain_value(value), place=index)
                index += 1
    except (pa.ArrowException, OSError) as exc:  # a damaged page: say where reading stopped
        location = f"{name}[#{index}]"
        yield JsonRow(location, None, problem=Problem(location, f"cannot read the file from here on ({exc})"), place=index)
    finally:
        handle.close()


def plain_value(value: Any) -> Any:
    """`value` with the types JSON has no word for (dates, decimals, bytes) written as strings, so that a
    record read from a table can be written out again (decompose --output, eval's files)."""
    if isinstance(value, dict):
        return {k: plain_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_value(v) for v in value]
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value
