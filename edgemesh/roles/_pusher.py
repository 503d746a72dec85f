"""The router's side of catalog pushes (``CatalogPusher``): the rules are in ``_push``'s
docstring; apart from the edge's side so that an edge never loads this, nor the scopes'
and the trimming's code it uses."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from ..catalog import (
    ALL,
    Catalog,
    CatalogDelta,
    Scope,
    ScopeIndex,
    advance_view,
    catalog_to_wire,
    delta_to_wire,
    diff_catalogs,
)
from ..transports import EnvelopeLink
from ..wire import encode_catalog
from ._push import catalog_digest

DEFAULT_PUSH_INTERVAL = 0.05
"""Seconds between two deltas to one edge, at least."""
HISTORY = 4
"""Older whole catalogs a router keeps to recognise what a connecting edge holds."""
PUSH_KINDS = ("snapshot", "delta", "rebase")

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
