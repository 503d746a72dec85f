"""The timer wheel (transports/_wheel.py): deadlines in buckets, one reactor timer."""

from __future__ import annotations

import gc

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, capturedLogs

from edgemesh.transports import EnvelopeLink, _wheel
from edgemesh.transports._wheel import RESOLUTION, TimerWheel, WheelTimer, wheel_for


def test_a_timer_fires_at_its_deadline_not_before() -> None:
    clock = Clock()
    wheel = TimerWheel(clock)
    fired: list[float] = []
    timer = wheel.call_later(5.0, lambda: fired.append(clock.seconds()))
    assert timer.active() and len(clock.getDelayedCalls()) == 1
    clock.advance(4.99)
    assert fired == []
    clock.advance(0.01)
    assert fired == [5.0] and not timer.active()
    assert clock.getDelayedCalls() == []  # an empty wheel holds no reactor timer


def test_timers_in_one_bucket_share_one_reactor_call() -> None:
    clock = Clock()
    wheel = TimerWheel(clock, resolution=0.5)
    fired: list[tuple[int, float]] = []
    for i, delay in enumerate([2.0, 2.1, 2.2, 2.3, 2.4]):
        wheel.call_later(delay, lambda i=i: fired.append((i, clock.seconds())))  # type: ignore[misc]
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(2.3)
    assert fired == []  # the bucket is due at its latest deadline, not before any of them
    clock.advance(0.1)
    assert fired == [(i, 2.4) for i in range(5)]  # in the order they were added
    assert wheel.wakeups == 1


def test_buckets_fire_in_deadline_order_with_one_reactor_timer_at_a_time() -> None:
    clock = Clock()
    wheel = TimerWheel(clock, resolution=1.0)
    fired: list[str] = []
    wheel.call_later(7.5, lambda: fired.append("late"))
    wheel.call_later(3.2, lambda: fired.append("early"))
    wheel.call_later(5.0, lambda: fired.append("middle"))
    assert len(clock.getDelayedCalls()) == 1
    assert clock.getDelayedCalls()[0].getTime() == 3.2
    clock.advance(4)
    assert fired == ["early"]
    assert [call.getTime() for call in clock.getDelayedCalls()] == [5.0]
    clock.advance(10)
    assert fired == ["early", "middle", "late"]  # both due: one wake-up runs them in order
    assert wheel.wakeups == 2


def test_cancelled_timers_never_fire_and_release_the_reactor_timer() -> None:
    clock = Clock()
    wheel = TimerWheel(clock)
    fired: list[int] = []
    first = wheel.call_later(1.0, lambda: fired.append(1))
    second = wheel.call_later(9.0, lambda: fired.append(2))
    first.cancel()
    first.cancel()  # twice is harmless
    assert not first.active() and second.active()
    assert [call.getTime() for call in clock.getDelayedCalls()] == [9.0]
    second.cancel()
    assert clock.getDelayedCalls() == [] and len(wheel) == 0
    clock.advance(20)
    assert fired == [] and wheel.wakeups == 0


def test_a_timer_can_cancel_another_of_its_bucket() -> None:
    clock = Clock()
    wheel = TimerWheel(clock, resolution=1.0)
    fired: list[str] = []
    timers: dict[str, WheelTimer] = {}

    def first() -> None:
        fired.append("a")
        timers["b"].cancel()

    timers["a"] = wheel.call_later(1.1, first)
    timers["b"] = wheel.call_later(1.2, lambda: fired.append("b"))
    clock.advance(1.2)
    assert fired == ["a"] and not timers["b"].active()


def test_a_timer_added_while_the_wheel_runs_waits_for_a_later_turn() -> None:
    clock = Clock()
    wheel = TimerWheel(clock)
    turns: list[int] = []

    def again() -> None:
        turns.append(wheel.wakeups)
        if len(turns) < 3:
            wheel.call_later(0, again)  # due at once: still not within this wake-up

    wheel.call_later(1.0, again)
    clock.advance(1.0)  # (Clock runs calls made while it advances: three wake-ups here)
    assert turns == [1, 2, 3]


def test_a_raising_timer_is_logged_and_the_others_still_fire() -> None:
    clock = Clock()
    wheel = TimerWheel(clock)
    fired: list[str] = []

    def broken() -> None:
        raise RuntimeError("boom")

    wheel.call_later(1.0, broken)
    wheel.call_later(1.0, lambda: fired.append("ok"))
    wheel.call_later(2.0, lambda: fired.append("later"))
    with capturedLogs() as events:
        clock.advance(1.0)
    assert fired == ["ok"]
    assert [e["log_level"] for e in events] == [LogLevel.critical]
    clock.advance(1.0)
    assert fired == ["ok", "later"]


def test_wheel_for_is_one_per_clock_and_lets_the_clock_go() -> None:
    clock = MemoryReactorClock()
    assert wheel_for(clock) is wheel_for(clock)
    assert wheel_for(clock) is not wheel_for(MemoryReactorClock())
    fired: list[str] = []
    wheel_for(clock).call_later(2.0, lambda: fired.append("fired"))
    clock.advance(2.0)
    assert fired == ["fired"]
    count = len(_wheel._WHEELS)
    del clock
    gc.collect()
    assert len(_wheel._WHEELS) < count  # the wheel does not keep its clock alive


def test_links_of_one_node_share_one_reactor_timer_for_their_heartbeats() -> None:
    """A thousand links' handshake deadlines and heartbeats: one reactor timer, not one each."""
    clock = MemoryReactorClock()

    class Quiet:
        def link_ready(self, link: EnvelopeLink) -> None: ...
        def link_lost(self, link: EnvelopeLink, reason: str) -> None: ...
        def inbound(self, *args: object) -> None: ...
        def control(self, *args: object) -> None: ...

    links = []
    for i in range(1000):
        clock.advance(0.003)  # they connect over three seconds
        link = EnvelopeLink(clock, Quiet(), node="router", role="router", client=False,  # type: ignore[arg-type]
                            handshake_timeout=10.0)
        link.makeConnection(StringTransport())  # type: ignore[no-untyped-call]
        links.append(link)
    assert len(clock.getDelayedCalls()) <= 2  # the wheel's, and the end of this turn's writes
    clock.advance(0)
    assert len(clock.getDelayedCalls()) == 1
    wheel = wheel_for(clock)
    for _ in range(40):  # no hello: each is closed at its handshake deadline
        clock.advance(RESOLUTION)
    assert all(link.closed for link in links)
    assert wheel.wakeups <= 3 / RESOLUTION + 2  # one per bucket, not one per link
    assert clock.getDelayedCalls() == []


# --- against a model: every timer fires once, late by less than a bucket, unless cancelled ---

_STEP = 0.05
"""The model's clock moves in steps this long (a reactor turns often)."""

_ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.floats(0, 20, allow_nan=False)),
        st.tuples(st.just("cancel"), st.integers(0, 200)),
        st.tuples(st.just("advance"), st.integers(0, 40)),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(ops=_ops, resolution=st.sampled_from([0.1, 0.25, 1.0, 3.0]))
def test_every_timer_fires_once_within_its_window_unless_cancelled(
    ops: list[tuple[str, float]], resolution: float
) -> None:
    clock = Clock()
    wheel = TimerWheel(clock, resolution=resolution)
    deadlines: list[float] = []
    fired: dict[int, float] = {}
    cancelled: set[int] = set()
    timers: list[WheelTimer] = []

    def fire(index: int) -> None:
        assert index not in fired and index not in cancelled
        fired[index] = clock.seconds()

    def step() -> None:
        clock.advance(_STEP)
        assert len(clock.getDelayedCalls()) <= 1

    def armed_for_the_head() -> None:
        # The one reactor timer is always the earliest live bucket's (call_at and cancel
        # leave it alone only for timers behind the head).
        live = [bucket.due for bucket in wheel._buckets.values() if bucket.timers]
        calls = clock.getDelayedCalls()
        if not live:
            assert calls == []
        else:
            assert len(calls) == 1
            assert abs(calls[0].getTime() - max(min(live), clock.seconds())) < 1e-9

    for op, value in ops:
        if op == "add":
            index = len(timers)
            deadlines.append(clock.seconds() + value)
            timers.append(wheel.call_later(value, lambda index=index: fire(index)))  # type: ignore[misc]
        elif op == "cancel" and timers:
            index = int(value) % len(timers)
            if timers[index].active():
                cancelled.add(index)
            timers[index].cancel()
        else:
            for _ in range(int(value)):
                step()
        armed_for_the_head()
    for _ in range(int(25 / _STEP)):  # every deadline is within 20 s of the last add
        step()
    assert clock.getDelayedCalls() == []
    for index, deadline in enumerate(deadlines):
        if index in cancelled:
            assert index not in fired
        else:
            assert deadline <= fired[index] < deadline + resolution + _STEP
    assert not any(timer.active() for timer in timers)
