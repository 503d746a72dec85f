"""
Catalog pushes between the router and its edges, both ends: the edge's here, the router's
(``CatalogPusher``) in ``_pusher``, which an edge never loads.

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

Rebase instead of a snapshot (router replicas, restarts).  Each replica numbers its own
revisions, so an edge that moves to another replica holds a revision that means nothing
there.  Its hello therefore says which catalog it holds: the revision and a digest of the
content (``catalog_digest``: blake2b, 120 bits, of a canonical encoding of the catalog
without its revision; ``HELD_*_SETTINGS``).  The router computes the same digest over the
view it would push to that edge (cached per view and revision) and over the views of the
few older catalogs it keeps (``HISTORY``).  On a match the first push on the link is a
*rebase*: a delta from the edge's revision to the router's current revision, empty when the
content is equal, and whose target may be at or below the edge's revision (the numbering is
the replica's).  The edge takes a first delta on a link only if its base is the edge's
revision; anything else on a link not yet synced closes it.  No match, no digest in the
hello (an older edge), or a rebase no smaller than a snapshot: a snapshot, as before.  An
older router ignores the settings and sends a snapshot.  The digest, not the revision, is
what makes the rebase safe: equal revisions on two replicas do not mean equal content.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

import msgpack
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorThreads, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..catalog import (
    Catalog,
    CatalogDelta,
    CatalogStore,
    DeltaError,
    SnapshotError,
    apply_delta,
    catalog_from_wire,
    catalog_to_wire,
    delta_from_wire,
)
from ..transports import EnvelopeLink
from ..wire import (
    HELD_DIGEST_SETTINGS,
    HELD_REVISION_SETTING,
    CatalogPush,
    encode_ack,
)

log = Logger()
RETRY_FIRST = 1.0
RETRY_MAX = 30.0
"""Seconds before a catalog write the disk refused is tried again, doubling up to this."""

_HALF = 60
_MAX_SETTING = 1 << 62  # hello settings are at most this (wire/_frames.py)


def _canonical(value: object) -> object:
    """Maps with sorted keys, tuples as lists: one encoding per content."""
    if isinstance(value, Mapping):
        return {k: _canonical(value[k]) for k in sorted(value, key=lambda k: (str(type(k)), k))}
    if isinstance(value, (list, tuple)):
        return [_canonical(item) for item in value]
    return value


def catalog_digest(catalog: Catalog) -> bytes:
    """A stable digest of ``catalog``'s content (not its revision): equal on every router
    and edge for equal content, whatever order the objects came in."""
    ordered = Catalog(services=[catalog.services[k] for k in sorted(catalog.services)],
                      nodes=[catalog.nodes[n] for n in sorted(catalog.nodes)])
    packed = msgpack.packb(_canonical(catalog_to_wire(ordered)), use_bin_type=True)
    return hashlib.blake2b(packed, digest_size=2 * _HALF // 8).digest()


def held_settings(revision: int, digest: bytes) -> dict[str, int]:
    """The edge's hello settings that say which catalog it holds (none for a revision too
    large for a setting)."""
    if revision >= _MAX_SETTING:
        return {}
    number = int.from_bytes(digest, "big")
    high, low = HELD_DIGEST_SETTINGS
    return {HELD_REVISION_SETTING: revision, high: number >> _HALF,
            low: number & ((1 << _HALF) - 1)}


def held_from_settings(settings: Mapping[str, int]) -> tuple[int, bytes] | None:
    """(revision, digest) from an edge's hello settings, or None (an older edge)."""
    high, low = HELD_DIGEST_SETTINGS
    revision, top, bottom = (settings.get(HELD_REVISION_SETTING), settings.get(high),
                             settings.get(low))
    if revision is None or top is None or bottom is None or top >> _HALF or bottom >> _HALF:
        return None
    return revision, ((top << _HALF) | bottom).to_bytes(2 * _HALF // 8, "big")


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
        clock: IReactorTime | None = None,
    ) -> None:
        """``clock``: retry a write the disk refused (none: only the next push writes)."""
        self.store = store
        self.get = get
        self.set_catalog = set_catalog
        self.run_blocking = run_blocking
        self.clock = clock
        self.unsaved: str | None = None
        """Why the catalog in use is not on disk, while a write fails (/readyz says it)."""
        self._failures = 0
        self._retry: IDelayedCall | None = None
        self.synced_link: EnvelopeLink | None = None
        """The link whose snapshot the current catalog follows."""
        self.saving: Catalog | None = None
        self._waiting: tuple[Catalog, EnvelopeLink] | None = None
        self.durable: int | None = None
        """The revision last written to disk by this process."""
        self._digest_of: tuple[Catalog, bytes] | None = None

    def held(self) -> dict[str, int]:
        """Hello settings: the revision and digest of the catalog this edge holds."""
        current = self.get()
        if self._digest_of is None or self._digest_of[0] is not current:
            self._digest_of = (current, catalog_digest(current))
        return held_settings(current.revision, self._digest_of[1])

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
            # A first delta (a rebase) must start at what this edge holds: its hello said so.
            if delta.base != current.revision:
                log.warn("closing tunnel: a first catalog delta from revision {base}, this "
                         "edge is at {revision}", base=delta.base, revision=current.revision)
                link.close_now("catalog delta before a snapshot")
                return
            applied = self._applied(link, current, delta)
            if applied is not None:
                self.synced_link = link
                self._install(link, applied)
            return
        if delta.rebase:
            log.warn("closing tunnel: a catalog rebase on a link already in sync")
            link.close_now("catalog rebase after the first push")
            return
        if delta.revision <= current.revision:
            self._ack_again(link, current)
            return
        if delta.base != current.revision:
            log.warn("closing tunnel: catalog delta from revision {base}, this edge is at "
                     "{revision}: resyncing", base=delta.base, revision=current.revision)
            link.close_now("catalog gap")
            return
        applied = self._applied(link, current, delta)
        if applied is not None:
            self._install(link, applied)

    @staticmethod
    def _applied(link: EnvelopeLink, current: Catalog, delta: CatalogDelta) -> Catalog | None:
        """The catalog after ``delta``, or None with the link closed when it does not apply."""
        try:
            return apply_delta(current, delta)
        except DeltaError as error:
            log.warn("closing tunnel: {error}", error=str(error))
            link.close_now("invalid catalog delta")
            return None

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
        if self._retry is not None and self._retry.active():
            self._retry.cancel()  # this write is the retry
        self._retry = None
        self.saving = catalog
        # self.store.save is looked up now, not bound earlier (tests replace it).
        done = self.run_blocking(lambda: self.store.save(catalog))
        done.addCallbacks(self._saved, self._not_saved, callbackArgs=(catalog, link),
                          errbackArgs=(catalog, link))
        done.addErrback(lambda failure: log.failure("catalog store", failure))

    def _saved(self, _: None, catalog: Catalog, link: EnvelopeLink) -> None:
        self.durable = catalog.revision
        if self._failures:
            log.info("catalog revision {revision} persisted after {count} failed writes",
                     revision=catalog.revision, count=self._failures)
        self._failures = 0
        self.unsaved = None
        # Acked only once durable: the router may then count on this edge surviving a
        # restart with it.
        if not link.closed:
            link.send_control(encode_ack(catalog.revision))
        self._next()

    def _not_saved(self, failure: Failure, catalog: Catalog, link: EnvelopeLink) -> None:
        self._failures += 1
        error = str(failure.value) if failure.check(OSError, ValueError) else repr(failure.value)
        delay = min(RETRY_MAX, RETRY_FIRST * 2 ** min(self._failures - 1, 10))
        self.unsaved = (f"catalog revision {catalog.revision} not on disk: {error}"
                        + (f" (trying again every {delay:g}s)" if self.clock is not None
                           else ""))
        if self._failures == 1:  # the retries of one failure say nothing more
            if failure.check(OSError, ValueError):
                log.error("catalog revision {revision} not persisted, not acked: {error}",
                          revision=catalog.revision, error=error)
            else:
                log.failure("catalog revision {revision} not persisted, not acked", failure,
                            revision=catalog.revision)
        self._next()
        if self.saving is None and self.clock is not None:
            # Nothing newer is being written: the disk may come back (space freed, remounted
            # read-write); until this catalog is on disk a restart offline would serve the
            # older one, and the router sees this edge's lag.
            self._retry = self.clock.callLater(delay, self._write_again, link)

    def _write_again(self, link: EnvelopeLink) -> None:
        self._retry = None
        if self.saving is None and self.durable != self.get().revision:
            self._save(self.get(), link)

    def stop(self) -> None:
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None

    def _next(self) -> None:
        self.saving = None
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            self._save(*waiting)

    def idle(self) -> bool:
        return self.saving is None
