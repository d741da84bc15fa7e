"""core/allocator.py: glibc's mmap threshold is fixed, so freed large blocks leave resident memory."""

from __future__ import annotations

import subprocess
import sys

import pytest

from qdtool.core.allocator import fix_mmap_threshold

PROBE = """
import sys
from qdtool.core.allocator import fix_mmap_threshold
if sys.argv[1] == "fixed":
    assert fix_mmap_threshold()
import ctypes
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def rss():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS:"))
size = 4 << 20  # an activation-sized block
first = libc.malloc(size); ctypes.memset(first, 1, size); libc.free(first)  # raises glibc's dynamic threshold
blocks = [libc.malloc(size) for _ in range(16)]
for b in blocks:
    ctypes.memset(b, 1, size)
fence = libc.malloc(64 << 10)  # keeps the freed blocks from being the heap's top, which free() trims
before = rss()
for b in blocks:
    libc.free(b)
print(before - rss())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_freed_large_blocks_leave_resident_memory_only_with_the_threshold_fixed():
    def returned_kib(mode: str) -> int:
        return int(subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout)

    assert returned_kib("fixed") > 60_000  # 64 MiB freed: nearly all of it leaves RSS
    assert returned_kib("dynamic") < 10_000  # the control: glibc's default keeps (most of) it


def test_it_reports_whether_it_applied():
    assert fix_mmap_threshold() is sys.platform.startswith("linux")
