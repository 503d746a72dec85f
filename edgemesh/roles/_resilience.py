"""
Resilience in the roles: the command-line options (a mixin of CommonOptions) and the
graceful drain that ``MeshNode.stopService`` runs on SIGTERM.

The drain: stop accepting (the source listeners close; the admin API stays), refuse new
streams from other nodes (``draining``: they go elsewhere), tell every peer (a GOAWAY on
every link: they stop choosing this node), let the exchanges in progress finish up to the
drain deadline, then stop the rest of the service tree.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    TimeoutError,
    gatherResults,
    maybeDeferred,
    succeed,
)
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from ..routing import Resilience
from ..wire import encode_goaway

if TYPE_CHECKING:
    from ..transports import EnvelopeLink
    from ._node import MeshNode

__all__ = ["ResilienceOptions", "drain", "second_signal_cuts_the_drain", "track_link"]

log = Logger(namespace="edgemesh.drain")

GOAWAY_REASON = "draining"


def _seconds(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a number of seconds") from None


def positive_seconds(value: str) -> float:
    """A duration option's value: more than 0, at most a day (every role's seconds)."""
    number = _seconds(value)
    if not 0 < number <= 86400:
        raise ValueError("must be more than 0 and at most 86400 seconds")
    return number


def seconds_or_off(value: str) -> float:
    """An interval option's value: 0 (off: "0", "0.0"...), else as ``positive_seconds``."""
    number = _seconds(value)
    if not 0 <= number <= 86400:
        raise ValueError("must be 0 (off) or more, and at most 86400 seconds")
    return number if number else 0.0  # -0.0 too


MIN_HEARTBEAT_INTERVAL = 0.1
"""The shortest --heartbeat-interval: every link pings this often, and a reactor busy for a
few such intervals would have its links closed for silence."""


def _heartbeat_interval(value: str) -> float:
    number = _seconds(value)
    if not MIN_HEARTBEAT_INTERVAL <= number <= 86400:
        raise ValueError(f"must be at least {MIN_HEARTBEAT_INTERVAL:g} and at most 86400 seconds")
    return number


def _count(low: int, high: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        number = int(value)
        if not low <= number <= high:
            raise ValueError(f"must be between {low} and {high}")
        return number

    parse.__name__ = parse.__qualname__ = "count"  # the value column of docs/configuration.md
    return parse


def _ratio(value: str) -> float:
    number = float(value.removesuffix("%")) / (100 if value.endswith("%") else 1)
    if not 0 <= number <= 1:
        raise ValueError("must be between 0 and 1 (or 0% and 100%)")
    return number


_D = Resilience()


class ResilienceOptions(usage.Options):
    """Timeouts, retries, outlier ejection, overload limits, heartbeats and drain;
    ``resilience()`` turns them into the Resilience settings."""

    optParameters: ClassVar[list[Any]] = [
        ["stream-idle-timeout", None, _D.stream_idle_timeout,
         ("Seconds an exchange may carry no data in either direction, counted from its last "
          "byte (then cancelled: 408 if the client stalled mid-upload, else 504)."),
         positive_seconds],
        ["retries", None, _D.retries,
         ("Attempts after the first on another endpoint (connect failure, or reset before any "
         "response byte for idempotent methods); a service's edgemesh.io/retries overrides it."),
         _count(0, 10)],
        ["retry-budget", None, _D.retry_budget_ratio,
         "Retries may add this share of a service's requests (0.2 or 20%).", _ratio],
        ["retry-budget-min", None, _D.retry_budget_min,
         "Retries per 10 s a service may make whatever its traffic.", _count(0, 100_000)],
        ["max-requests-per-service", None, _D.max_requests_per_service,
         "Exchanges in progress per service on this node; more get 503 overloaded.",
         _count(1, 1_000_000)],
        ["max-hops", None, _D.max_hops,
         ("Mesh nodes one request may pass (each edge or router counts once; the mesh's own "
          "longest path is 3: edge, router, edge); one more is answered 508 loop."),
         _count(3, 255)],
        ["outlier-failures", None, _D.consecutive_failures,
         "Consecutive failures (connect errors, resets, timeouts, 5xx) that eject an endpoint.",
         _count(1, 1000)],
        ["ejection-time", None, _D.base_ejection,
         "Seconds of the first ejection (× the times ejected; at most --max-ejection-time).",
         positive_seconds],
        ["max-ejection-time", None, _D.max_ejection, "Longest ejection, in seconds.",
         positive_seconds],
        ["max-ejection-percent", None, _D.max_ejection_percent,
         "Most endpoints of a service ejected at once, in per cent (always one of two or more).",
         _count(0, 100)],
        ["heartbeat-interval", None, _D.heartbeat_interval,
         f"Seconds between pings on every link (at least {MIN_HEARTBEAT_INTERVAL:g}).",
         _heartbeat_interval],
        ["heartbeat-timeout", None, _D.heartbeat_timeout,
         ("A link silent this long (more than --heartbeat-interval) is closed and its "
         "exchanges fail at once."), positive_seconds],
        ["drain-timeout", None, _D.drain_timeout,
         ("On SIGTERM, seconds the exchanges in progress may take before the node stops "
          "(then those still waiting get 503 draining; under twistd a second SIGTERM or "
          "Ctrl-C stops it at once)."),
         positive_seconds],
    ]

    def check_resilience(self) -> None:
        """Refuse the settings that are wrong only together (each coercer checked its own)."""
        interval, timeout = self["heartbeat-interval"], self["heartbeat-timeout"]
        if timeout <= interval:  # a link would be closed between two pings
            raise usage.UsageError(f"--heartbeat-timeout {timeout:g}: must be more than "
                                   f"--heartbeat-interval ({interval:g})")
        first, longest = self["ejection-time"], self["max-ejection-time"]
        if first > longest:
            raise usage.UsageError(f"--ejection-time {first:g}: must not be more than "
                                   f"--max-ejection-time ({longest:g})")

    def resilience(self) -> Resilience:
        return Resilience(
            request_timeout=self.get("request-timeout", _D.request_timeout),
            stream_idle_timeout=self["stream-idle-timeout"],
            retries=self["retries"],
            retry_budget_ratio=self["retry-budget"],
            retry_budget_min=self["retry-budget-min"],
            max_requests_per_service=self["max-requests-per-service"],
            max_hops=self["max-hops"],
            consecutive_failures=self["outlier-failures"],
            base_ejection=self["ejection-time"],
            max_ejection=self["max-ejection-time"],
            max_ejection_percent=self["max-ejection-percent"],
            heartbeat_interval=self["heartbeat-interval"],
            heartbeat_timeout=self["heartbeat-timeout"],
            drain_timeout=self["drain-timeout"],
        )


_links: weakref.WeakKeyDictionary[Any, weakref.WeakSet[EnvelopeLink]] = weakref.WeakKeyDictionary()


def track_link(node: MeshNode, link: EnvelopeLink) -> EnvelopeLink:
    """Remember a link of ``node`` (any kind, either direction) for the GOAWAY at drain."""
    links = _links.get(node)
    if links is None:
        links = _links[node] = weakref.WeakSet()
    links.add(link)
    return link


def node_links(node: MeshNode) -> list[EnvelopeLink]:
    return [link for link in _links.get(node, ()) if not link.closed]


def drain(node: MeshNode, settings: Resilience,
          stop_rest: Callable[[], Deferred[Any] | None]) -> Deferred[None]:
    """Drain ``node``, then ``stop_rest()`` (the MultiService stop of its children)."""
    pipeline = node.pipeline
    if pipeline.draining:
        return maybeDeferred(stop_rest).addCallback(lambda _: None)
    pipeline.start_drain()
    clock = node.reactor
    started = clock.seconds()
    log.info("draining: {count} exchanges in progress, deadline {deadline:g}s",
             count=pipeline.in_flight, deadline=settings.drain_timeout)
    stopping = [
        maybeDeferred(listener.stopService)
        for listener in node.listeners.values()
        if listener.kind is not None  # a Source; the admin API stays up meanwhile
    ]
    told = 0
    hint = getattr(node, "move_hint", None)  # router replicas: where its edges should go
    for link in node_links(node):
        if link.connection.ready:
            move_to = hint(link) if hint is not None and link.connection.peer_move else None
            link.send_control(encode_goaway(GOAWAY_REASON, move_to=move_to))
            told += 1
    if told:
        log.info("GOAWAY sent on {count} links: peers choose this node no more", count=told)

    waiting = pipeline.when_drained() if pipeline.in_flight else succeed(None)
    moved = getattr(node, "when_moved", None)
    if moved is not None:
        # Router replicas: the edges told to move leave first (no gap for their traffic).
        waiting = gatherResults([waiting, moved()], consumeErrors=True).addCallback(lambda _: None)
    waiting.addTimeout(settings.drain_timeout, clock)
    node.cut_drain = waiting.cancel  # a second stop signal (second_signal_cuts_the_drain)

    def deadline(failure: Failure) -> None:
        failure.trap(TimeoutError, CancelledError)
        if failure.check(TimeoutError):
            why = "drain deadline"
            detail = (f"{node.pipeline.node} stopped: its drain deadline "
                      f"({settings.drain_timeout:g}s) passed before the response")
        else:
            why = "asked again to stop"
            detail = f"{node.pipeline.node} stopped before the response (asked twice to stop)"
        log.warn("{why}: stopping with {count} exchanges still in progress", why=why,
                 count=pipeline.in_flight)
        # What is still waiting gets the mesh's 503 draining, not a closed connection.
        pipeline.cut_short(detail)

    def drained(_: object) -> Deferred[Any]:
        node.cut_drain = None
        log.info("stopping after {elapsed:.3f}s of drain", elapsed=clock.seconds() - started)
        return maybeDeferred(stop_rest)

    waiting.addErrback(deadline)
    listening: Deferred[Any] = gatherResults(stopping, consumeErrors=True)
    listening.addErrback(lambda _: None)
    both: list[Deferred[Any]] = [listening, waiting]
    done: Deferred[Any] = gatherResults(both).addCallback(drained)
    return done.addCallback(lambda _: None)


def second_signal_cuts_the_drain(reactor: Any, node: MeshNode) -> None:
    """For a process that is the node's alone (twistd): once it is stopping, a second SIGTERM
    or SIGINT (Ctrl-C twice, an impatient supervisor) ends the drain at once.  Twisted's
    own handlers would call ``reactor.stop()`` again, which logs a critical
    ReactorNotRunning traceback and changes nothing."""
    import signal

    def again(number: int, frame: object) -> None:
        reactor.callFromThread(_cut, node)

    def install() -> None:
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, again)

    reactor.addSystemEventTrigger("before", "shutdown", install)


def _cut(node: MeshNode) -> None:
    cut = node.cut_drain
    if cut is None:
        log.info("already stopping")
        return
    node.cut_drain = None
    cut()
