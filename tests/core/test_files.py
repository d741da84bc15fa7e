"""core/files.py: the one writer of files and directories (atomic, located errors)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from qdtool.core import files
from qdtool.core.files import WriteError, atomic_dir, ensure_writable_dir, ensure_writable_file, write_text_atomic
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
