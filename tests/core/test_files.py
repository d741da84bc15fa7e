"""core/files.py: the one writer of files and directories (atomic, located errors)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from qdtool.core import files
from qdtool.core.files import (
    DamagedFileError,
    WriteError,
    append_json_line,
    atomic_dir,
    ensure_writable_dir,
    ensure_writable_file,
    read_json,
    read_json_lines,
    remove_stale_temps,
    write_json_atomic,
    write_text_atomic,
)
from qdtool.errors import UsageError


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_atomic_dir_replaces_a_whole_directory(tmp_path):
    target = tmp_path / "merged"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("old")
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("new")
    assert _names(target) == ["b.txt"]
    assert _names(tmp_path) == ["merged"]  # no temp or set-aside dir left


def test_a_failure_inside_keeps_the_old_directory_and_leaves_no_temp(tmp_path):
    target = tmp_path / "merged"
    with atomic_dir(target) as tmp:
        (tmp / "model.safetensors").write_text("good")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_dir(target) as tmp:
            (tmp / "model.safetensors").write_text("half")
            raise RuntimeError("killed mid-write")
    assert (target / "model.safetensors").read_text() == "good"
    assert _names(tmp_path) == ["merged"]


def test_disk_full_inside_becomes_a_write_error_with_the_space_needed(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(WriteError, match=r"no space left .*needs about 2\.50 GB"):
        with atomic_dir(target, needed_bytes=2_500_000_000):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert not target.exists() and _names(tmp_path) == []
    with pytest.raises(WriteError, match=r"needs about 12\.3 MB"):  # small writes in MB, not "0.01 GB"
        with atomic_dir(target, needed_bytes=12_300_000):
            raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_swap_puts_the_old_directory_back(tmp_path, monkeypatch):
    target = tmp_path / "merged"
    with atomic_dir(target) as tmp:
        (tmp / "x").write_text("old")
    real_rename = os.rename
    calls = []

    def rename(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 2:  # the new dir into place: refuse it
            raise OSError(errno.EIO, "I/O error")
        return real_rename(src, dst)

    monkeypatch.setattr(files.os, "rename", rename)
    with pytest.raises(WriteError, match="I/O error"):
        with atomic_dir(target) as tmp:
            (tmp / "x").write_text("new")
    assert (target / "x").read_text() == "old"


def test_a_killed_write_leaves_temps_that_the_next_write_removes(tmp_path):
    (tmp_path / ".tmp-merged-123-abcdef").mkdir()
    (tmp_path / ".old-merged-123-abcdef").mkdir()
    (tmp_path / ".tmp-other-1-aaaaaa").mkdir()  # another target's temp: not ours to remove
    with atomic_dir(tmp_path / "merged") as tmp:
        (tmp / "x").write_text("1")
    assert _names(tmp_path) == [".tmp-other-1-aaaaaa", "merged"]


def test_stale_temps_of_every_name_go_when_no_name_is_given(tmp_path):
    for name in (".tmp-step-0000004-1-aaaaaa", ".old-step-0000002-1-bbbbbb", "step-0000002"):
        (tmp_path / name).mkdir()
    (tmp_path / ".tmp-x-1-cccccc").write_text("a temp file")
    remove_stale_temps(tmp_path)
    assert _names(tmp_path) == ["step-0000002"]


def test_write_text_atomic_cleans_up_on_disk_full(tmp_path, monkeypatch):
    path = tmp_path / "report.json"
    path.write_text("old")

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(WriteError, match=f"no space left on the device holding {path}"):
        write_text_atomic(path, "new")
    assert path.read_text() == "old" and _names(tmp_path) == ["report.json"]


@pytest.mark.parametrize("code, words", [(errno.EROFS, "read-only"), (errno.EACCES, "permission denied")])
def test_unwritable_directories_are_usage_errors_before_any_work(tmp_path, monkeypatch, code, words):
    def refuse(*_a, **_k):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(files.tempfile, "mkstemp", refuse)
    with pytest.raises(UsageError, match=words):
        ensure_writable_dir(tmp_path / "out")
    with pytest.raises(UsageError, match=words):
        ensure_writable_file(tmp_path / "out.jsonl")


def test_a_file_where_a_directory_should_be_is_named(tmp_path):
    (tmp_path / "out").write_text("")
    with pytest.raises(UsageError, match="is not a directory"):
        ensure_writable_dir(tmp_path / "out")
    with pytest.raises(UsageError, match="is a directory"):
        ensure_writable_file(tmp_path)


def test_json_files_round_trip_as_utf8_with_a_final_newline(tmp_path):
    path = tmp_path / "run" / "run_summary.json"
    write_json_atomic(path, {"b": "질문 é", "a": [1, 2.5, None]}, sort_keys=True)
    assert path.read_text(encoding="utf-8") == '{\n  "a": [\n    1,\n    2.5,\n    null\n  ],\n  "b": "질문 é"\n}\n'
    assert read_json(path) == {"a": [1, 2.5, None], "b": "질문 é"}
    assert _names(path.parent) == ["run_summary.json"]  # no temp left beside it


def test_read_json_names_a_damaged_file_and_a_missing_one_is_the_default(tmp_path):
    assert read_json(tmp_path / "none.json", default={}) == {}
    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "none.json")
    for content in (b'{"steps": 3', b"\xff\xfe{}", b"[" * 100_000):
        (tmp_path / "bad.json").write_bytes(content)
        with pytest.raises(DamagedFileError, match=rf"{tmp_path / 'bad.json'} is not valid JSON \(.+\): it was cut short") as info:
            read_json(tmp_path / "bad.json")
        assert isinstance(info.value.__cause__, ValueError)


def test_json_lines_append_whole_and_a_torn_or_blank_line_is_skipped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert read_json_lines(path) == []
    append_json_line(path, {"step": 1, "name": "런"})
    append_json_line(path, {"step": 2})
    assert path.read_text(encoding="utf-8") == '{"step": 1, "name": "런"}\n{"step": 2}\n'
    with path.open("a") as f:
        f.write('\n{"step": 3, "lo')
    assert read_json_lines(path) == [{"step": 1, "name": "런"}, {"step": 2}]


def test_a_full_disk_while_appending_a_json_line_is_a_write_error(tmp_path, monkeypatch):
    def full(self, *_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "open", full)
    with pytest.raises(WriteError, match=r"no space left on the device holding .*rows.jsonl.*it needs about 0\.0 MB"):
        append_json_line(tmp_path / "rows.jsonl", {"step": 1})
