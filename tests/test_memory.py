"""pipeline.memory: freed heap pages really go back to the system (what keeps msmtfn-predict's peak
flat on hours of audio; the peak itself is measured in bench/long_recording_memory.py)."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import pytest

from pipeline.memory import release_freed_memory


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_freed_pages_inside_the_heap_are_returned():
    # 400 arrays of 96 KB (under glibc's mmap threshold: heap pages); every tenth kept, so the
    # freed ones sit inside the heap, where free() alone keeps them
    arrays = [np.ones(12_000) for _ in range(400)]
    kept = arrays[::10]
    del arrays
    before = _rss_kb()
    assert release_freed_memory() is True
    assert before - _rss_kb() > 8_000, "fewer than 8 MB of the 34 MB freed went back"
    assert all(float(a.sum()) == 12_000 for a in kept)  # what is still held is intact
