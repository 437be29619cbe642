"""A glibc allocator setting for the renderer's many large numpy temporaries (process-wide, applied once,
no-op off glibc). Owns tune_malloc.
"""
from __future__ import annotations



_MALLOC_TUNED = False


def tune_malloc():
    """Keep numpy's large temporaries on the heap instead of a fresh mmap per operation.

    Rendering makes thousands of ~0.5 MB temporaries; with glibc's default thresholds each one is mmapped,
    page-faulted and unmapped, which costs ~30% of the renderer's time. Raising the thresholds (process-wide,
    like MALLOC_MMAP_THRESHOLD_=...) only changes where freed memory goes; no-op off glibc."""
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return
    _MALLOC_TUNED = True
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
        libc.mallopt(-3, 64 << 20)   # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass
