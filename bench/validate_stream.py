"""`qdtool validate-data` on large files: records per second and peak memory, per format.

    python bench/validate_stream.py                                  # 1,000,000 records, JSONL and Parquet
    python bench/validate_stream.py --records 200000 --formats jsonl,parquet,csv
    python bench/validate_stream.py --out docs/benchmarks/validate_stream.jsonl

The files are generated in a temporary directory (deleted afterwards unless --keep): valid records,
each question unique, three steps. Each file is then checked by `python -m qdtool validate-data FILE
--json` in a child process, as a user runs it; its wall time gives records/s, and its peak RSS comes
from the kernel (os.wait4's ru_maxrss for that child alone). A run on a 10-record file gives the
fixed cost (interpreter, imports), so that the growth per record can be told apart from it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEPS = ("When was {who} born?", "When was the laptop invented?", "Is #2 before the death of #1?")
CHUNK = 100_000  # records generated (and written as one Parquet row group) at a time


def records(n: int, start: int = 0):
    for i in range(start, start + n):
        who = f"person number {i}"
        yield {"id": i, "question": f"Was {who} alive when the laptop was invented?", "sub_questions": [s.format(who=who) for s in STEPS]}


def write_jsonl(path: Path, n: int) -> None:
    with path.open("w", encoding="utf-8") as f:
        for record in records(n):
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def write_csv(path: Path, n: int) -> None:
    import csv

    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "question", "sub_questions"])
        for record in records(n):
            writer.writerow([record["id"], record["question"], "\n".join(record["sub_questions"])])


def write_parquet(path: Path, n: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("id", pa.int64()), ("question", pa.string()), ("sub_questions", pa.list_(pa.string()))])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, n, CHUNK):
            rows = list(records(min(CHUNK, n - start), start))
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))


WRITERS = {"jsonl": write_jsonl, "csv": write_csv, "parquet": write_parquet}


def measure(path: Path) -> dict:
    """One `qdtool validate-data PATH --json` in a child process: wall seconds, peak RSS, and what it reported.

    Peak RSS two ways: VmHWM from /proc/PID/status, polled (the child's own high-water mark since exec),
    and os.wait4's ru_maxrss for that child. Linux carries a process's high-water mark over exec, so
    ru_maxrss is at least this script's RSS when it forked: the script stays small for that (files are
    written by a child of their own).
    """
    command = [sys.executable, "-m", "qdtool", "validate-data", str(path), "--json"]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        began = time.perf_counter()
        child = subprocess.Popen(command, stdout=out, stderr=err)
        hwm_kib = 0
        while True:
            hwm_kib = max(hwm_kib, _vm_hwm_kib(child.pid))
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(POLL_S)
        wall = time.perf_counter() - began
        code = os.waitstatus_to_exitcode(status)
        child.returncode = code
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if code not in (0, 1):
        raise SystemExit(f"{' '.join(command)} exited {code}: {stderr.decode(errors='replace')[-2000:]}")
    report = json.loads(stdout)["files"][0]
    return {"exit_code": code, "valid": report["valid"], "records": report["records"], "wall_s": round(wall, 2),
            "peak_rss_mib": round(hwm_kib / 1024, 1) if hwm_kib else None,
            "ru_maxrss_mib": round(usage.ru_maxrss / 1024, 1)}  # ru_maxrss: KiB on Linux


POLL_S = 0.02


def _vm_hwm_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):  # gone, or no /proc (then ru_maxrss is the figure)
        pass
    return 0


def generate(fmt: str, path: Path, n: int) -> float:
    """Write the file in a child process (this one stays small, see measure); its seconds."""
    began = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--write", fmt, str(path), str(n)], check=True)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--formats", default="jsonl,parquet", help=f"comma-separated, of {', '.join(WRITERS)}")
    parser.add_argument("--out", type=Path, help="append one JSON line per format here")
    parser.add_argument("--keep", action="store_true", help="keep the generated files (their directory is printed)")
    parser.add_argument("--write", nargs=3, metavar=("FORMAT", "PATH", "N"), help=argparse.SUPPRESS)  # the writer child
    args = parser.parse_args()
    if args.write:
        fmt, path, n = args.write
        WRITERS[fmt](Path(path), int(n))
        return
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    unknown = [f for f in formats if f not in WRITERS]
    if unknown:
        parser.error(f"unknown format(s) {', '.join(unknown)}; choose from {', '.join(WRITERS)}")

    directory = Path(tempfile.mkdtemp(prefix="qdtool-validate-bench-"))
    try:
        rows = run(directory, args.records, formats)
    finally:
        if args.keep:
            print(f"files kept in {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")


def run(directory: Path, n: int, formats: list[str]) -> list[dict]:
    print(f"{'format':<8} {'records':>10} {'file MiB':>9} {'wall s':>8} {'records/s':>10} {'peak RSS MiB':>13} {'fixed MiB':>10} "
          f"{'bytes/record':>13}")
    rows = []
    for fmt in formats:
        tiny, path = directory / f"tiny.{fmt}", directory / f"data.{fmt}"
        generate(fmt, tiny, 10)
        base = measure(tiny)  # the fixed cost of this format: interpreter, imports (pyarrow for Parquet)
        generated = generate(fmt, path, n)
        row = measure(path)
        if row["records"] != n or not row["valid"]:
            raise SystemExit(f"{path}: validate-data reported {row['records']} records, valid {row['valid']}; expected {n}, valid")
        peak, fixed = (row["peak_rss_mib"], base["peak_rss_mib"]) if row["peak_rss_mib"] else (row["ru_maxrss_mib"], base["ru_maxrss_mib"])
        growth = (peak - fixed) * 2**20 / n
        row |= {"format": fmt, "file_mib": round(path.stat().st_size / 2**20, 1), "records_per_s": round(n / row["wall_s"]),
                "fixed_peak_rss_mib": fixed, "fixed_wall_s": base["wall_s"], "rss_bytes_per_record_over_fixed": round(growth, 1),
                "generate_s": round(generated, 1)}
        rows.append(row)
        print(f"{fmt:<8} {n:>10,} {row['file_mib']:>9.1f} {row['wall_s']:>8.1f} {row['records_per_s']:>10,} {peak:>13.1f} {fixed:>10.1f} "
              f"{growth:>13.1f}", flush=True)
    return rows


if __name__ == "__main__":
    main()
