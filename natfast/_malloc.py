"""Keep freed heap memory in the process (glibc), for the command-line runs.

Scoring many architectures under inference mode frees each activation as soon as the next op has
read it. glibc hands big freed blocks back to the kernel (munmap, heap trimming), so the next
allocation of the same size faults every page in again: 0.3-1 million minor page faults per
derive pass over 11 architectures on a 2-core VM, 10-15% of its time (bench/RESULTS.md, "Memory and lanes").
Serving every allocation from the heap and never trimming it removes them; the price is that the
process keeps its peak memory until it exits, which suits a CLI run. Every thread allocates from
that one heap: glibc gives other threads (the lane workers) arenas of 64 MB heaps, each unmapped
as soon as it empties whatever the trim threshold, which cost 30-190 thousand minor faults per
4 x 4 policy step (2-4% of it) until they shared the main arena. Library users opt in by
calling `keep_freed_memory()` themselves; `NATFAST_KEEP_FREED_MEMORY=0` turns the CLI's call off.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1   # mallopt parameters, from glibc's malloc.h
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory (no mmap for big blocks, no trimming, one arena for all
    threads). True if it applied."""
    if not sys.platform.startswith("linux") or os.environ.get("NATFAST_KEEP_FREED_MEMORY", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return (bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
            and bool(mallopt(_M_ARENA_MAX, 1)))
