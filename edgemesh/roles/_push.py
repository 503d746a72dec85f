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
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import msgpack
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorThreads
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..catalog import (
    ALL,
    Catalog,
    CatalogDelta,
    CatalogStore,
    DeltaError,
    Scope,
    ScopeIndex,
    SnapshotError,
    advance_view,
    apply_delta,
    catalog_from_wire,
    catalog_to_wire,
    delta_from_wire,
    delta_to_wire,
    diff_catalogs,
)
from ..transports import EnvelopeLink
from ..wire import (
    HELD_DIGEST_SETTINGS,
    HELD_REVISION_SETTING,
    CatalogPush,
    encode_ack,
    encode_catalog,
)

DEFAULT_PUSH_INTERVAL = 0.05
"""Seconds between two deltas to one edge, at least."""
HISTORY = 4
"""Older whole catalogs a router keeps to recognise what a connecting edge holds."""
PUSH_KINDS = ("snapshot", "delta", "rebase")

log = Logger()

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
    """The edge's catalog as of the newest push: its view."""
    sent_whole: Catalog | None = None
    """The router's whole catalog that view was last brought up to date with."""
    sent_scope: Scope | None = None
    sent_namespaces: frozenset[str] | None = None
    """The namespaces of the view, under a scope (None: all)."""
    last_push: float = -math.inf
    """When the last delta left (snapshots do not count: a change right after a connect
    goes at once)."""
    timer: IDelayedCall | None = None
    pushes: int = 0
    trim: bool = False
    """It receives trimmed views (its hello said ``trimmed`` and the router trims):
    other edge nodes' endpoints as aggregates (``catalog/_trim.py``)."""


class CatalogPusher:
    """The router's side: what each edge was sent, and when it gets the next push.

    Each edge receives its *view* of the catalog (``catalog/_scope.py``): the whole catalog
    under the scope ``all``, else the Services of its scope.  A change outside an edge's
    view sends that edge nothing: its revision stays where it is.  A scoped edge's next
    view is worked out from the change (``advance_view``), not cut again from the whole
    catalog, so a change costs each edge the size of the change."""

    def __init__(self, clock: Any, current: Callable[[], Catalog],
                 interval: float = DEFAULT_PUSH_INTERVAL,
                 scope_of: Callable[[str, Catalog], Scope] | None = None) -> None:
        self.clock = clock
        self.current = current
        self.interval = interval
        self.scope_of = scope_of
        """The scope of an edge (by node name) in a catalog; None: every edge gets all."""
        # Per current revision, shared by the edges: encoded pushes, cut views, the index
        # views are cut with, and the deltas from older whole catalogs.
        self._frames: dict[tuple[object, ...], bytes] = {}
        self._views: dict[tuple[object, ...], Catalog] = {}
        self._deltas: dict[int, CatalogDelta] = {}
        self._index: ScopeIndex | None = None
        self._cached_for = -1
        # For rebases: the last few whole catalogs, and digests of views (current and
        # older) by (revision, scope key).
        self._latest: Catalog | None = None
        self._history: deque[Catalog] = deque(maxlen=HISTORY)
        self._digests: dict[tuple[int, object], bytes] = {}
        self.pushes = dict.fromkeys(PUSH_KINDS, 0)
        """Pushes sent, by kind (a rebase is a first push that is a delta)."""

    def _now(self) -> Catalog:
        catalog = self.current()
        if self._cached_for != catalog.revision:
            self._frames, self._views, self._deltas, self._index = {}, {}, {}, None
            self._cached_for = catalog.revision
            if self._latest is not None and self._latest.revision != catalog.revision:
                self._history.append(self._latest)
            self._latest = catalog
            kept = {c.revision for c in self._history} | {catalog.revision}
            self._digests = {k: d for k, d in self._digests.items() if k[0] in kept}
        return catalog

    def _scope(self, state: EdgeState, catalog: Catalog) -> Scope:
        return ALL if self.scope_of is None else self.scope_of(state.node, catalog)

    def _index_of(self, catalog: Catalog) -> ScopeIndex:
        if self._index is None:
            self._index = ScopeIndex(catalog)
        return self._index

    def _cut(self, state: EdgeState, catalog: Catalog, scope: Scope) -> Catalog:
        """``state``'s view cut from the whole catalog (edges with one key share it)."""
        if scope.everything and not state.trim:
            return catalog
        key = self._view_key(state, scope)
        view = self._views.get(key)
        if view is None:
            view = self._views[key] = self._index_of(catalog).view(state.node, scope,
                                                                   state.trim)
        return view

    @staticmethod
    def _view_key(state: EdgeState, scope: Scope) -> tuple[object, ...]:
        # A trimmed view holds the edge's own node exactly: one per node.
        return (*scope.key(state.node), state.node) if state.trim else scope.key(state.node)

    def _encoded(self, key: tuple[object, ...], make: Callable[[], bytes]) -> bytes:
        frame = self._frames.get(key)
        if frame is None:
            frame = self._frames[key] = make()
        return frame

    def _snapshot_frame(self, view: Catalog, scope: Scope, state: EdgeState) -> bytes:
        return self._encoded(("snapshot", self._view_key(state, scope)), lambda: encode_catalog(
            view.revision, "snapshot", catalog_to_wire(view)))

    def _delta_frame(self, delta: CatalogDelta) -> bytes:
        # Edges whose views take the same change get the same bytes: encoded once.
        # (A trimmed Service differs between edges: by identity, shared while it is alike.)
        key = ("delta", delta.base, tuple((s.key, id(s)) for s in delta.services),
               delta.removed_services, tuple(n.name for n in delta.nodes), delta.removed_nodes)
        return self._encoded(key, lambda: encode_catalog(delta.revision, "delta",
                                                          delta_to_wire(delta)))

    def _send(self, state: EdgeState, frame: bytes, view: Catalog, catalog: Catalog,
              scope: Scope, namespaces: frozenset[str] | None, delta: bool,
              kind: str = "snapshot") -> None:
        state.link.send_control(frame)
        self.pushes[kind] += 1
        state.sent = view.revision
        state.sent_catalog = view
        self._sent_from(state, catalog, scope, namespaces)
        if delta:
            state.last_push = self.clock.seconds()
        state.pushes += 1

    @staticmethod
    def _sent_from(state: EdgeState, catalog: Catalog, scope: Scope,
                   namespaces: frozenset[str] | None) -> None:
        state.sent_whole, state.sent_scope, state.sent_namespaces = catalog, scope, namespaces

    def snapshot(self, state: EdgeState) -> None:
        """Send ``state``'s edge its whole current view, now."""
        self.cancel(state)
        catalog = self._now()
        scope = self._scope(state, catalog)
        view = self._cut(state, catalog, scope)
        namespaces = None if scope.everything else self._index_of(catalog).namespaces(
            state.node, scope)
        self._send(state, self._snapshot_frame(view, scope, state), view, catalog, scope,
                   namespaces, delta=False)

    def first_push(self, state: EdgeState, held: tuple[int, bytes] | None) -> str:
        """The first push to a connected edge that said (``held``) which catalog it holds:
        a rebase when its digest is that of its view now or of an older catalog kept, else
        a snapshot.  Returns the kind sent."""
        if held is None:
            self.snapshot(state)
            return "snapshot"
        self.cancel(state)
        catalog = self._now()
        scope = self._scope(state, catalog)
        view = self._cut(state, catalog, scope)
        revision, digest = held
        base = self._held_view(state, catalog, scope, view, digest)
        change = None if base is None else diff_catalogs(base, view)
        if change is None or len(change) > max(8, (len(view.services) + len(view.nodes)) // 2):
            self.snapshot(state)
            return "snapshot"
        rebase = CatalogDelta(revision, view.revision, change.services, change.removed_services,
                              change.nodes, change.removed_nodes, rebase=True)
        key = ("rebase", revision, digest, self._view_key(state, scope))
        frame = self._encoded(key, lambda: encode_catalog(view.revision, "delta",
                                                          delta_to_wire(rebase)))
        namespaces = None if scope.everything else self._index_of(catalog).namespaces(
            state.node, scope)
        self._send(state, frame, view, catalog, scope, namespaces, delta=False, kind="rebase")
        return "rebase"

    def _held_view(self, state: EdgeState, catalog: Catalog, scope: Scope, view: Catalog,
                   digest: bytes) -> Catalog | None:
        """The view (now, else of a kept older catalog) whose digest is ``digest``."""
        if self._view_digest(catalog.revision, self._view_key(state, scope), view) == digest:
            return view
        for old in reversed(self._history):
            old_scope = self._scope(state, old)
            key = (old.revision, self._view_key(state, old_scope))
            known = self._digests.get(key)
            if known is not None and known != digest:
                continue
            old_view = (old if old_scope.everything and not state.trim
                        else ScopeIndex(old).view(state.node, old_scope, state.trim))
            if self._view_digest(old.revision, key[1], old_view) == digest:
                return old_view
        return None

    def _view_digest(self, revision: int, scope_key: object, view: Catalog) -> bytes:
        digest = self._digests.get((revision, scope_key))
        if digest is None:
            digest = self._digests[(revision, scope_key)] = catalog_digest(view)
        return digest

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
        base, whole = state.sent_catalog, state.sent_whole
        if base is None or whole is None:
            self.snapshot(state)
            return
        catalog = self._now()
        if whole.revision == catalog.revision:
            return
        scope = self._scope(state, catalog)
        if scope.everything and state.sent_scope == scope and not state.trim:
            delta = self._delta(base, catalog)
            self._push(state, delta, catalog, catalog, scope, None)
            return
        namespaces = None if scope.everything else self._index_of(catalog).namespaces(
            state.node, scope)
        delta = self._delta(whole, catalog)
        if state.sent_scope == scope and state.sent_namespaces == namespaces and not (
                state.trim and _edges_changed(whole, delta)):
            trim = None
            if state.trim:
                index, node = self._index_of(catalog), state.node
                trim = lambda service: index.trimmed(service, node)
            change = advance_view(base, catalog, delta, state.node, namespaces, trim)
        else:  # its scope, or the namespaces of its pods, changed: cut its view again
            change = diff_catalogs(base, self._cut(state, catalog, scope))
            change = None if change.empty else change
        if change is None:  # nothing in this edge's view changed: no push, no revision
            self._sent_from(state, catalog, scope, namespaces)
            return
        self._push(state, change, _applied(base, change), catalog, scope, namespaces)

    def _delta(self, old: Catalog, catalog: Catalog) -> CatalogDelta:
        """From an older whole catalog to the current one (once per older revision)."""
        delta = self._deltas.get(old.revision)
        if delta is None:
            delta = self._deltas[old.revision] = diff_catalogs(old, catalog)
        return delta

    def _push(self, state: EdgeState, delta: CatalogDelta, view: Catalog, catalog: Catalog,
              scope: Scope, namespaces: frozenset[str] | None) -> None:
        # A delta that touches most of the view is no smaller than a snapshot.
        if len(delta) > max(8, (len(view.services) + len(view.nodes)) // 2):
            frame, kind = self._snapshot_frame(view, scope, state), "snapshot"
        else:
            frame, kind = self._delta_frame(delta), "delta"
        self._send(state, frame, view, catalog, scope, namespaces, delta=True, kind=kind)

    def lag(self, state: EdgeState) -> int | None:
        """Revisions the edge is behind what it should hold (None before its first ack).
        With a scope, revisions outside its view do not count."""
        if state.acked is None:
            return None
        pending = state.timer is not None and state.timer.active()
        newest = self.current().revision if pending else (state.sent or 0)
        return max(0, newest - state.acked)

    def cancel(self, state: EdgeState) -> None:
        if state.timer is not None and state.timer.active():
            state.timer.cancel()
        state.timer = None

    @staticmethod
    def acked(state: EdgeState, revision: int) -> None:
        # Acks may repeat or come late: the edge's revision is the highest one.
        if state.acked is None or revision > state.acked:
            state.acked = revision


def _applied(view: Catalog, delta: CatalogDelta) -> Catalog:
    """``apply_delta`` for a view the router keeps per edge: parts of checked catalogs, so
    not checked nor indexed again (1000 edges × a 1000-Service view, each change)."""
    services = dict(view.services)
    for key in delta.removed_services:
        services.pop(key, None)
    services.update((s.key, s) for s in delta.services)
    nodes = dict(view.nodes)
    for name in delta.removed_nodes:
        nodes.pop(name, None)
    nodes.update((n.name, n) for n in delta.nodes)
    return Catalog.assembled(services, nodes, delta.revision)


def _edges_changed(old: Catalog, delta: CatalogDelta) -> bool:
    """A node became an edge or stopped being one: what a trimmed view folds changes."""
    return any(old.is_edge(n.name) != n.edge for n in delta.nodes) or any(
        old.is_edge(name) for name in delta.removed_nodes)


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
