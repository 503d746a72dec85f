"""
Catalog pushes between the router and its edges, both ends.

Router (``CatalogPusher``): an edge gets a full snapshot when it connects, then deltas.
Each edge has what it was last sent (a Catalog: immutable, so shared between edges);
a change schedules a push per edge, at most one per ``interval`` (a rollout of 500 pods
becomes a few deltas, each from what that edge has to the newest catalog).  Deltas and
snapshots are encoded once per revision pair, whatever the number of edges.

Edge (``CatalogFollower``): revisions only move forward on a link.  The first snapshot on a
link is taken whatever its revision: the router may have restarted, with revisions that
restart too (``--catalog FILE`` is always revision 0) or a wall clock that stepped back.
After it, a push at or below the current revision is a duplicate or a late one: nothing
is applied, the current revision is acked again.  A delta must start at the current
revision; one that does not is a gap, and the edge drops the link: reconnecting brings a
snapshot.  Invalid pushes drop the link too.  A revision is acked once it is on disk,
written in a thread when the reactor has threads, one write at a time (a write that
finds newer catalogs waiting writes only the newest).

Revisions from the Kubernetes source are microseconds of wall-clock time at the change
(at least the previous one plus one), so they also grow across router restarts; the
snapshot-on-connect rule above keeps edges right when they do not.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorThreads
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..catalog import (
    Catalog,
    CatalogStore,
    DeltaError,
    SnapshotError,
    apply_delta,
    catalog_from_wire,
    catalog_to_wire,
    delta_from_wire,
    delta_to_wire,
    diff_catalogs,
)
from ..transports import EnvelopeLink
from ..wire import CatalogPush, encode_ack, encode_catalog

DEFAULT_PUSH_INTERVAL = 0.05
"""Seconds between two deltas to one edge, at least."""

log = Logger()


@dataclass
class EdgeState:
    """The router's view of one connected edge."""

    node: str
    connected_since: float
    link: EnvelopeLink
    acked: int | None = None
    """The highest revision the edge acked (stored durably)."""
    sent: int | None = None
    """The revision of the newest push sent."""
    sent_catalog: Catalog | None = None
    last_push: float = -math.inf
    """When the last delta left (snapshots do not count: a change right after a connect
    goes at once)."""
    timer: IDelayedCall | None = None
    pushes: int = 0


class CatalogPusher:
    """The router's side: what each edge was sent, and when it gets the next push."""

    def __init__(self, clock: Any, current: Callable[[], Catalog],
                 interval: float = DEFAULT_PUSH_INTERVAL) -> None:
        self.clock = clock
        self.current = current
        self.interval = interval
        self._frames: dict[tuple[str, int], bytes] = {}
        """Encoded pushes to the current revision, by (kind, base revision)."""
        self._frames_for = -1

    def _frame(self, kind: str, base: Catalog | None, catalog: Catalog) -> bytes:
        if self._frames_for != catalog.revision:
            self._frames = {}
            self._frames_for = catalog.revision
        key = (kind, -1 if base is None else base.revision)
        frame = self._frames.get(key)
        if frame is None:
            if kind == "snapshot":
                frame = encode_catalog(catalog.revision, "snapshot", catalog_to_wire(catalog))
            else:
                assert base is not None
                delta = diff_catalogs(base, catalog)
                # A delta that touches most of the catalog is no smaller than a snapshot.
                if len(delta) > max(8, (len(catalog.services) + len(catalog.nodes)) // 2):
                    frame = self._frame("snapshot", None, catalog)
                else:
                    frame = encode_catalog(catalog.revision, "delta", delta_to_wire(delta))
            self._frames[key] = frame
        return frame

    def snapshot(self, state: EdgeState) -> None:
        """Send ``state``'s edge the whole current catalog, now."""
        self.cancel(state)
        catalog = self.current()
        state.link.send_control(self._frame("snapshot", None, catalog))
        state.sent = catalog.revision
        state.sent_catalog = catalog
        state.pushes += 1

    def changed(self, states: Iterable[EdgeState]) -> None:
        """The current catalog changed: bring every edge to it, throttled per edge."""
        now = self.clock.seconds()
        for state in states:
            if state.sent_catalog is None:
                self.snapshot(state)
            elif state.timer is None:
                wait = state.last_push + self.interval - now
                if wait <= 0:
                    self.flush(state)
                else:
                    state.timer = self.clock.callLater(wait, self._timed_flush, state)

    def _timed_flush(self, state: EdgeState) -> None:
        state.timer = None
        if not state.link.closed:
            self.flush(state)

    def flush(self, state: EdgeState) -> None:
        """Send ``state``'s edge what it misses, now (nothing if it has it all)."""
        self.cancel(state)
        catalog, base = self.current(), state.sent_catalog
        if base is None:
            self.snapshot(state)
            return
        if base.revision == catalog.revision:
            return
        state.link.send_control(self._frame("delta", base, catalog))
        state.sent = catalog.revision
        state.sent_catalog = catalog
        state.last_push = self.clock.seconds()
        state.pushes += 1

    def cancel(self, state: EdgeState) -> None:
        if state.timer is not None and state.timer.active():
            state.timer.cancel()
        state.timer = None

    @staticmethod
    def acked(state: EdgeState, revision: int) -> None:
        # Acks may repeat or come late: the edge's revision is the highest one.
        if state.acked is None or revision > state.acked:
            state.acked = revision


# -- edge side ------------------------------------------------------------------------------


def blocking_runner(reactor: Any) -> Callable[[Callable[[], None]], Deferred[None]]:
    """Runs blocking file I/O in the reactor's thread pool when it has one (a real
    reactor), else inline (a test's MemoryReactorClock)."""
    if IReactorThreads.providedBy(reactor):
        from twisted.internet.threads import deferToThreadPool

        def in_thread(work: Callable[[], None]) -> Deferred[None]:
            result: Deferred[None] = deferToThreadPool(reactor, reactor.getThreadPool(), work)
            return result

        return in_thread

    def inline(work: Callable[[], None]) -> Deferred[None]:
        result: Deferred[None] = maybeDeferred(work)
        return result

    return inline


class CatalogFollower:
    """The edge's side: applies pushes to the pipeline's catalog, stores them, acks them."""

    def __init__(
        self,
        store: CatalogStore,
        get: Callable[[], Catalog],
        set_catalog: Callable[[Catalog], None],
        run_blocking: Callable[[Callable[[], None]], Deferred[None]],
    ) -> None:
        self.store = store
        self.get = get
        self.set_catalog = set_catalog
        self.run_blocking = run_blocking
        self.synced_link: EnvelopeLink | None = None
        """The link whose snapshot the current catalog follows."""
        self.saving: Catalog | None = None
        self._waiting: tuple[Catalog, EnvelopeLink] | None = None
        self.durable: int | None = None
        """The revision last written to disk by this process."""

    def apply(self, link: EnvelopeLink, push: CatalogPush) -> None:
        current = self.get()
        try:
            if push.kind == "snapshot":
                catalog = catalog_from_wire(push.payload).with_revision(push.revision)
                if link is self.synced_link and push.revision <= current.revision:
                    self._ack_again(link, current)
                    return
                self.synced_link = link
                self._install(link, catalog)
                return
            delta = delta_from_wire(push.payload)
            if delta.revision != push.revision:
                raise DeltaError(f"catalog delta: revision {delta.revision} in a push of "
                                 f"revision {push.revision}")
        except SnapshotError as error:
            log.warn("closing tunnel: invalid catalog push: {error}", error=str(error))
            link.close_now("invalid catalog")
            return
        if link is not self.synced_link:
            log.warn("closing tunnel: a catalog delta before any snapshot")
            link.close_now("catalog delta before a snapshot")
            return
        if delta.revision <= current.revision:
            self._ack_again(link, current)
            return
        if delta.base != current.revision:
            log.warn("closing tunnel: catalog delta from revision {base}, this edge is at "
                     "{revision}: resyncing", base=delta.base, revision=current.revision)
            link.close_now("catalog gap")
            return
        try:
            catalog = apply_delta(current, delta)
        except DeltaError as error:
            log.warn("closing tunnel: {error}", error=str(error))
            link.close_now("invalid catalog delta")
            return
        self._install(link, catalog)

    def _install(self, link: EnvelopeLink, catalog: Catalog) -> None:
        self.set_catalog(catalog)
        log.info("catalog revision {revision}: {count} services", revision=catalog.revision,
                 count=len(catalog.services))
        self._save(catalog, link)

    def _ack_again(self, link: EnvelopeLink, current: Catalog) -> None:
        """A duplicate or older push: nothing changes; the revision we hold is acked once
        it is durable (now, or when the write in progress ends)."""
        if self.durable == current.revision and not link.closed:
            link.send_control(encode_ack(current.revision))

    # -- durable writes, one at a time ------------------------------------------------

    def _save(self, catalog: Catalog, link: EnvelopeLink) -> None:
        if self.saving is not None:
            self._waiting = (catalog, link)
            return
        self.saving = catalog
        # self.store.save is looked up now, not bound earlier (tests replace it).
        done = self.run_blocking(lambda: self.store.save(catalog))
        done.addCallbacks(self._saved, self._not_saved, callbackArgs=(catalog, link),
                          errbackArgs=(catalog,))
        done.addErrback(lambda failure: log.failure("catalog store", failure))

    def _saved(self, _: None, catalog: Catalog, link: EnvelopeLink) -> None:
        self.durable = catalog.revision
        # Acked only once durable: the router may then count on this edge surviving a
        # restart with it.
        if not link.closed:
            link.send_control(encode_ack(catalog.revision))
        self._next()

    def _not_saved(self, failure: Failure, catalog: Catalog) -> None:
        if failure.check(OSError, ValueError):
            log.error("catalog revision {revision} not persisted, not acked: {error}",
                      revision=catalog.revision, error=str(failure.value))
        else:
            log.failure("catalog revision {revision} not persisted, not acked", failure,
                        revision=catalog.revision)
        self._next()

    def _next(self) -> None:
        self.saving = None
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            self._save(*waiting)

    def idle(self) -> bool:
        return self.saving is None
