"""
A byte stream in progress between a Source and a Target (issue 12): the guard in the
middle counts it against its service's cap, counts bytes each way, cuts it after the
stream idle timeout, and reports it once it is over.  No I/O: the clock is a parameter.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from zope.interface import implementer

from ..exchange import IByteStream, IStreamSource, MeshError, Reason, SourceKind
from ._decide import Route
from ._health import ServiceState


class StreamGuard:
    """One byte stream: ``up`` is what the source writes the client's bytes to, ``down``
    what the target answers through.  Producers pass straight through (no extra hop)."""

    __slots__ = (
        "_idle_timeout", "_on_close", "_seen", "_timer", "aborted_by", "activity", "bytes_down",
        "bytes_up",
        "client", "clock", "connected_at", "done", "down", "down_ended", "error", "route",
        "service_key", "source", "source_kind", "started", "state", "target_side", "up",
        "up_ended",
    )

    def __init__(
        self,
        clock: IReactorTime | None,
        source_kind: SourceKind,
        route: Route,
        client: str,
        source: IStreamSource,
        state: ServiceState,
        idle_timeout: float,
        on_close: Callable[[StreamGuard], None],
    ) -> None:
        self.clock = clock
        self.source_kind = source_kind
        self.route = route
        self.service_key = route.service.key
        self.client = client
        self.source = source
        self.state = state
        self._idle_timeout = idle_timeout
        self._on_close = on_close
        self.target_side: IByteStream | None = None
        self.up = _Up(self)
        self.down = _Down(self)
        self.started = self._now()
        self.connected_at: float | None = None
        self.bytes_up = 0
        """Client → far end."""
        self.bytes_down = 0
        self.up_ended = False
        self.down_ended = False
        self.done = False
        self.error: MeshError | None = None
        """Why it ended without a clean close both ways (None: it did not)."""
        self.aborted_by: str | None = None
        """Who cut it: ``source`` (the client side), ``target`` (the far side), ``idle``."""
        self.activity = 0
        self._seen = -1
        self._timer: IDelayedCall | None = None
        self._arm()

    def _now(self) -> float:
        return 0.0 if self.clock is None else self.clock.seconds()

    def _arm(self) -> None:
        if self.clock is not None and self._idle_timeout > 0 and not self.done:
            self._timer = self.clock.callLater(self._idle_timeout, self._idle_check)

    def _idle_check(self) -> None:
        self._timer = None
        if self.done:
            return
        if self.activity == self._seen:
            self.aborted_by = "idle"
            self.abort_both(MeshError(
                Reason.upstream_timeout,
                f"{self.service_key}: stream idle for {self._idle_timeout:g}s",
            ))
            return
        self._seen = self.activity
        self._arm()

    @property
    def duration(self) -> float:
        return self._now() - self.started

    def attach(self, target_side: IByteStream) -> None:
        """The target's side, once ``open_stream`` returned it."""
        if self.done:
            target_side.abort(self.error or MeshError(Reason.upstream_lost, "stream over"))
            return
        self.target_side = target_side

    def abort_both(self, error: MeshError) -> None:
        if self.done:
            return
        self._finish(error)
        target = self.target_side
        self.target_side = None
        if target is not None:
            target.abort(error)
        self.source.abort(error)

    def _ended(self) -> None:
        if self.up_ended and self.down_ended:
            self._finish(None)

    def _finish(self, error: MeshError | None) -> None:
        if self.done:
            return
        self.done = True
        self.error = error
        timer = self._timer
        if timer is not None and timer.active():
            timer.cancel()
        self._timer = None
        self._on_close(self)


@implementer(IByteStream)
class _Up:
    """Source → target."""

    __slots__ = ("guard",)

    def __init__(self, guard: StreamGuard) -> None:
        self.guard = guard

    def write(self, data: bytes) -> None:
        guard = self.guard
        target = guard.target_side
        if guard.done or guard.up_ended or target is None:
            return
        guard.bytes_up += len(data)
        guard.activity += 1
        target.write(data)

    def end(self) -> None:
        guard = self.guard
        target = guard.target_side
        if guard.done or guard.up_ended:
            return
        guard.up_ended = True
        guard.activity += 1
        if target is not None:
            target.end()
        guard._ended()

    def abort(self, error: MeshError) -> None:
        guard = self.guard
        if guard.done:
            return
        guard.aborted_by = "source"
        guard._finish(error)
        target = guard.target_side
        guard.target_side = None
        if target is not None:
            target.abort(error)

    def setProducer(self, producer: IPushProducer) -> None:
        target = self.guard.target_side
        if target is not None:
            target.setProducer(producer)


@implementer(IStreamSource)
class _Down:
    """Target → source."""

    __slots__ = ("guard",)

    def __init__(self, guard: StreamGuard) -> None:
        self.guard = guard

    def connected(self) -> None:
        guard = self.guard
        if guard.done or guard.connected_at is not None:
            return
        guard.connected_at = guard._now()
        guard.activity += 1
        guard.source.connected()

    def write(self, data: bytes) -> None:
        guard = self.guard
        if guard.done or guard.down_ended:
            return
        guard.bytes_down += len(data)
        guard.activity += 1
        guard.source.write(data)

    def end(self) -> None:
        guard = self.guard
        if guard.done or guard.down_ended:
            return
        guard.down_ended = True
        guard.activity += 1
        guard.source.end()
        guard._ended()

    def abort(self, error: MeshError) -> None:
        guard = self.guard
        if guard.done:
            return
        guard.aborted_by = "target"
        guard.target_side = None
        guard._finish(error)
        guard.source.abort(error)

    def setProducer(self, producer: IPushProducer) -> None:
        self.guard.source.setProducer(producer)
