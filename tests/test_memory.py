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


PATTERN = """
import sys
from pathlib import Path
import numpy as np
from pipeline.memory import map_large_allocations

def rss_kb():
    line = [x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmRSS:")]
    return int(line[0].split()[1])

if sys.argv[1] == "fixed":
    assert map_large_allocations()
big = np.ones(200_000)
del big  # a freed 1.6 MB mapping: glibc raises its threshold to that size
arrays = [np.ones(40_000) for _ in range(400)]  # 320 KB each
kept = arrays[::10]
del arrays
print(rss_kb())  # what the process still holds
"""


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_a_fixed_mmap_threshold_returns_large_arrays_as_they_are_freed(tmp_path):
    """After one large array is freed glibc puts later ones of its size on the heap, where freed
    pages stay; map_large_allocations (msmtfn-predict, msmtfn-serve) keeps them mapped apart:
    the ~115 MB freed is gone from the resident set at once."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]

    def held_after_free(mode: str) -> int:
        script = tmp_path / "pattern.py"
        script.write_text(PATTERN)
        out = subprocess.run(
            [sys.executable, str(script), mode],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONPATH": str(root)},
        )
        return int(out.stdout.split()[-1])

    default, fixed = held_after_free("default"), held_after_free("fixed")
    assert default - fixed > 60_000, (default, fixed)
