"""Giving freed memory back to the operating system during a long job.

glibc keeps the heap pages of freed arrays for reuse; with batches of ever-changing shapes (each chunk
of a call's segments) the kept pages grow with the job instead of being reused, so a 3-hour call's
peak RSS grew with its length although each chunk's arrays were freed (docs/reliability.md).
``malloc_trim(0)`` returns them, and a fixed mmap threshold gives every large array its own mapping,
unmapped when it is freed; elsewhere than glibc both are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _libc():
    name = ctypes.util.find_library("c")
    try:
        lib = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return lib if lib is not None and hasattr(lib, "malloc_trim") else None


def release_freed_memory() -> bool:
    """Return the heap's free pages to the system (glibc ``malloc_trim``); False where there is
    no such call (macOS, musl)."""
    lib = _libc()
    if lib is None:
        return False
    lib.malloc_trim(0)
    return True


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MAP_LARGE_BYTES = 256 * 1024


def map_large_allocations(threshold: int = MAP_LARGE_BYTES) -> bool:
    """Allocate every block of ``threshold`` bytes or more with its own mapping, returned to the
    system when freed (glibc ``mallopt(M_MMAP_THRESHOLD)``; fixing it also stops glibc raising it
    after each free, which is what lets the heap grow). Process-wide: the CLIs that score long
    recordings call it at start. False where there is no such call."""
    lib = _libc()
    return lib is not None and bool(lib.mallopt(M_MMAP_THRESHOLD, int(threshold)))
