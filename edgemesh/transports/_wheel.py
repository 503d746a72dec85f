"""
A timer wheel: many timers, one reactor timer.

Every link has a heartbeat (and, before its hello, a handshake deadline).  With a timer
each, a router with a thousand idle edges wakes up for every one of them; the wheel puts
the deadlines in buckets of ``resolution`` seconds and keeps a single reactor timer for the
next due bucket, so the links whose deadlines fall together are served in one turn.

The structure is sans-IO apart from that one ``callLater`` on the clock it is given.  A
timer fires when its bucket is due: never before its deadline, at most ``resolution``
seconds after it (a bucket is due at the latest deadline it was given).  Adding and
cancelling are O(1) for a bucket that exists; a new bucket costs a heap push (there are at
most horizon ÷ resolution of them).
"""

from __future__ import annotations

import heapq
import weakref
from collections.abc import Callable
from typing import Any, cast

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

RESOLUTION = 0.25
"""Seconds a bucket spans: the most a timer fires late.  Heartbeats run every few seconds
and time out after several: a quarter of a second late changes nothing they decide."""


class WheelTimer:
    """One timer on a wheel: ``active()`` and ``cancel()`` as an IDelayedCall has them."""

    __slots__ = ("_bucket", "_callback", "_wheel", "deadline")

    def __init__(self, wheel: TimerWheel, deadline: float, callback: Callable[[], object]) -> None:
        self._wheel = wheel
        self.deadline = deadline
        self._callback = callback
        self._bucket: _Bucket | None = None

    def active(self) -> bool:
        return self._bucket is not None

    def cancel(self) -> None:
        """Forget the timer (nothing happens if it already fired or was cancelled)."""
        bucket = self._bucket
        if bucket is not None:
            self._bucket = None
            self._wheel._remove(bucket, self)


class _Bucket:
    __slots__ = ("due", "slot", "timers")

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.due = 0.0
        """The latest deadline given to this bucket: when it fires."""
        self.timers: dict[WheelTimer, None] = {}
        """Insertion-ordered: timers of one bucket fire in the order they were added."""


class TimerWheel:
    """Deadlines in buckets of ``resolution`` seconds, driven by one reactor timer."""

    log = Logger()

    def __init__(self, clock: IReactorTime, resolution: float = RESOLUTION) -> None:
        if resolution <= 0:
            raise ValueError(f"resolution must be positive, not {resolution}")
        self.clock = clock
        self.resolution = resolution
        self._buckets: dict[int, _Bucket] = {}
        self._slots: list[int] = []
        """A heap of bucket slots; a slot whose bucket emptied stays until it comes up."""
        self._call: IDelayedCall | None = None
        self._call_due = 0.0
        self._call_slot = -1
        """The head bucket's slot while ``_call`` is armed for it: what ``call_at`` and
        ``_remove`` compare with to leave a timer that is not the head's alone."""
        self._running = False
        self.wakeups = 0
        """Reactor timer calls that ran (for benchmarks and tests)."""

    def __len__(self) -> int:
        return sum(len(bucket.timers) for bucket in self._buckets.values())

    def call_later(self, delay: float, callback: Callable[[], object]) -> WheelTimer:
        """Run ``callback()`` once, ``delay`` seconds from now (up to ``resolution`` later)."""
        return self.call_at(self.clock.seconds() + delay, callback)

    def call_at(self, deadline: float, callback: Callable[[], object]) -> WheelTimer:
        """Run ``callback()`` once, at ``deadline`` on the clock (up to ``resolution`` later;
        at the next bucket's turn if it is past)."""
        timer = WheelTimer(self, deadline, callback)
        slot = int(deadline // self.resolution)
        bucket = self._buckets.get(slot)
        if bucket is None:
            bucket = self._buckets[slot] = _Bucket(slot)
            heapq.heappush(self._slots, slot)
        if deadline > bucket.due:
            bucket.due = deadline
        bucket.timers[timer] = None
        timer._bucket = bucket
        # Only a timer in or before the head bucket moves the reactor timer: a connection's
        # deadline behind the heartbeats' is a dict insert (new-connection /small exchange
        # on path 1: the wheel's calls ~3 -> ~1 %, cProfile).
        if not self._running and (self._call is None or slot <= self._call_slot):
            self._arm()
        return timer

    def _remove(self, bucket: _Bucket, timer: WheelTimer) -> None:
        if self._buckets.get(bucket.slot) is not bucket:
            return  # a bucket being run: the timer's mark says it is cancelled
        del bucket.timers[timer]
        if not bucket.timers:
            del self._buckets[bucket.slot]
            if not self._running and bucket.slot == self._call_slot:
                self._arm()  # the head bucket went: the next one's deadline

    def _head(self) -> _Bucket | None:
        """The earliest bucket that has timers (dropping the slots of emptied ones)."""
        slots = self._slots
        while slots:
            bucket = self._buckets.get(slots[0])
            if bucket is not None:
                return bucket
            heapq.heappop(slots)
        return None

    def _arm(self) -> None:
        """One reactor timer, for the earliest bucket; none when the wheel is empty."""
        head = self._head()
        call = self._call
        if head is None:
            self._call_slot = -1
            if call is not None:
                self._call = None
                call.cancel()
            return
        delay = max(0.0, head.due - self.clock.seconds())
        if call is None:
            self._call = self.clock.callLater(delay, self._run)
        elif self._call_due != head.due:
            call.reset(delay)  # the head bucket changed, or its latest deadline did
        self._call_due = head.due
        self._call_slot = head.slot

    def _run(self) -> None:
        self._call = None
        self._call_slot = -1
        self.wakeups += 1
        now = self.clock.seconds()
        # Take the due buckets first: a timer added while they run (a heartbeat re-arming
        # itself) waits for a later turn, however short its delay, as Twisted's own do.
        due: list[_Bucket] = []
        self._running = True
        try:
            while (head := self._head()) is not None and head.due <= now:
                heapq.heappop(self._slots)
                del self._buckets[head.slot]
                due.append(head)
            for bucket in due:
                for timer in bucket.timers:
                    if timer._bucket is not bucket:
                        continue  # cancelled by an earlier timer of this turn
                    timer._bucket = None
                    try:
                        timer._callback()
                    except Exception:  # noqa: BLE001 -- one timer must not stop the others
                        self.log.failure("timer callback {callback!r} raised",
                                         callback=timer._callback)
        finally:
            self._running = False
            self._arm()


_WHEELS: weakref.WeakKeyDictionary[Any, TimerWheel] = weakref.WeakKeyDictionary()


def wheel_for(clock: IReactorTime) -> TimerWheel:
    """The wheel of this clock (one per reactor: every link of a node shares it)."""
    wheel = _WHEELS.get(clock)
    if wheel is None:
        # The wheel holds its clock weakly: a strong reference from the value would keep
        # the key (a test's clock, and all it holds) alive for ever.
        wheel = _WHEELS[clock] = TimerWheel(cast(IReactorTime, weakref.proxy(clock)))
    return wheel
