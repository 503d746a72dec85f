"""The C heap of a mesh process: glibc malloc's mmap threshold (``--malloc-mmap-threshold``)
and the trims that give its free pages back (``--malloc-trim-interval``).

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

What the heap frees in its middle stays resident until ``malloc_trim``.  Over mTLS links
under faults (bench/soak.py), a router held a frozen edge's stalled streams up to the
links' windows and freed them at the heartbeat timeout: its RssAnon rose from 39.3 to
46.6 MiB over 33 rounds while the bytes in use stayed at 13.4 MB of 20.6 MB taken from the
system (gdb ``malloc_stats()``), and one ``malloc_trim(0)`` took it back to 40.1 MiB.  So a
process that owns its heap (twistd) trims it now and then, and soon after a link closes.
"""

from __future__ import annotations

import ctypes
import math
import os
from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime

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


def _malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``, or None (not glibc)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int
    return lambda: trim(0)


def release_free_heap() -> None:
    """Give the C heap's free pages back to the kernel now (glibc; else a no-op)."""
    trim = _malloc_trim()
    if trim is not None:
        trim()


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_anonymous() -> int | None:
    """This process's resident memory not backed by a file, in bytes (/proc/self/statm:
    resident minus shared), or None where there is no /proc."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            fields = statm.read().split()
    except OSError:
        return None
    return (int(fields[1]) - int(fields[2])) * _PAGE


TRIM_INTERVAL = 60.0
"""Seconds between two trims (``--malloc-trim-interval``): one costs 0.8 ms with 24 MiB free
and a few µs with nothing to give back (glibc 2.36 here), so at most a millisecond a minute
for a heap never more than a minute above what it uses."""

TRIM_SETTLE = 2.0
"""Seconds after a link closes before the trim it brings: its streams' buffers are freed
when their exchanges end, within the turn that closes it or shortly after."""

TRIM_GAP = 10.0
"""Seconds between two trims at least: links that come and go (a thousand edges
reconnecting) bring one trim per gap, not one each."""


class HeapTrimmer(Service):
    """Gives the C heap's free pages back (``malloc_trim``) every ``interval`` seconds, and
    ``settle`` seconds after ``soon()`` (a link closed), never twice within ``gap``.  Only for
    a process that owns its heap: the twistd plugins build it, an embedding host does not."""

    def __init__(
        self,
        clock: IReactorTime,
        interval: float = TRIM_INTERVAL,
        *,
        trim: Callable[[], object],
        resident: Callable[[], int | None] = resident_anonymous,
        settle: float = TRIM_SETTLE,
        gap: float = TRIM_GAP,
    ) -> None:
        self.clock = clock
        self.interval = interval
        self.settle = settle
        self.gap = gap
        self._trim = trim
        self._resident = resident
        self.trims = 0
        self.released = 0
        """Bytes of resident anonymous memory the trims gave back, all together."""
        self._call: IDelayedCall | None = None
        self._last = -math.inf

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._at(self.clock.seconds() + self.interval)

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def soon(self) -> None:
        """Memory was just freed in bulk (a link closed): trim after ``settle`` seconds,
        or ``gap`` seconds after the last trim if that is later."""
        if not self.running:
            return
        due = max(self.clock.seconds() + self.settle, self._last + self.gap)
        if self._call is None or self._call.getTime() > due:
            self._at(due)

    def _at(self, when: float) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = self.clock.callLater(max(0.0, when - self.clock.seconds()), self._fire)

    def _fire(self) -> None:
        self._call = None
        before = self._resident()
        self._trim()
        after = self._resident()
        self.trims += 1
        if before is not None and after is not None and before > after:
            self.released += before - after
        self._last = self.clock.seconds()
        self._at(self._last + self.interval)

    def counters(self) -> tuple[int, int]:
        """(trims, bytes released) for the metrics."""
        return self.trims, self.released


def heap_trimmer(clock: IReactorTime, interval: float) -> HeapTrimmer | None:
    """A trimmer for this process, or None: ``interval`` 0 (off), or no glibc."""
    trim = _malloc_trim()
    if interval <= 0 or trim is None:
        return None
    return HeapTrimmer(clock, interval, trim=trim)
