"""The C heap of a mesh process: glibc malloc's mmap threshold (``--malloc-mmap-threshold``).

glibc serves a block from the heap's free space when it can; when the heap has to grow for
a block at or above its mmap threshold, the block gets a mapping of its own, unmapped when
freed.  The threshold starts at 128 KiB and rises to the size of every mapped block freed,
and the trim threshold (free space at the heap's top kept rather than returned) to twice
that: after the first 256 KiB read of a link, the heap grows for such reads and keeps
512 KiB at its top, and reads shrunk to what arrived, between frames and pieces of other
sizes, leave holes the next 256 KiB read does not fit.  An edge receiving 32 responses of
1 MiB over a link grew its heap by 3-5 MiB of such free space in some runs (VmHWM growth
/small → /big +3.3 to +5.2 MiB with 0.4-1.1 MiB in use at the peak; bench/memprobe).  Set
with mallopt, neither threshold moves: +0.9-1.3 MiB in every run
(bench/results-2026-12-03.md section 19), for a page fault per 4 KiB that a mapped read
takes.
"""

from __future__ import annotations

import ctypes

M_MMAP_THRESHOLD = -3
"""mallopt's parameter number (malloc.h)."""

MAX_MMAP_THRESHOLD = 32 * 1024 * 1024
"""glibc's largest mmap threshold on 64-bit (HEAP_MAX_SIZE / 2)."""

DEFAULT_MMAP_THRESHOLD = 256 * 1024
"""Blocks of a link's read (transports/_io.LARGE_BUFFER) and more: the pod connections'
reads (at most 128 KiB) and everything smaller stay on the heap, without a page fault each.
A plaintext link no longer allocates its reads (transports/_io.pooled_reads): a new bytes of
LARGE_BUFFER + 33 bytes per read was mapped and faulted in whenever the heap had no hole for
it, the bimodal slow state of p2 /big (bench/results-2026-12-04.md section 2)."""


def set_mmap_threshold(size: int) -> bool:
    """Serve blocks of ``size`` bytes or more with mmap, unmapped at free, and stop glibc
    from raising that threshold.  0 leaves glibc's dynamic threshold.  False when not set
    (0, or not glibc)."""
    if size <= 0:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, min(size, MAX_MMAP_THRESHOLD)))
