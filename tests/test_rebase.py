"""Rebases (roles/_push.py): an edge that says which catalog it holds gets a delta from its own
revision, not a snapshot, from a router (another replica, a restarted one) whose view has that
content.  The digest, the hello settings, the follower's first-delta rule, the router's choice,
and an edge and a router on one memory reactor."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_catalog_delta import _catalogs, _settings, _through_msgpack
from test_sources_push import (
    Edge,
    FakeLink,
    Mesh,
    Router,
    catalog,
    delta_between,
    snapshot_of,
    web,
)
from twisted.internet.testing import MemoryReactorClock
from twisted.test.iosim import ConnectionCompleter

from edgemesh.catalog import (
    Catalog,
    CatalogDelta,
    DeltaError,
    apply_delta,
    catalog_from_wire,
    catalog_to_wire,
    delta_from_wire,
    delta_to_wire,
    diff_catalogs,
)
from edgemesh.roles._push import catalog_digest, held_from_settings, held_settings
from edgemesh.roles._pusher import EdgeState
from edgemesh.routing import ROUTER_PEER

# -- the digest and the hello settings ---------------------------------------------------------


@_settings
@given(_catalogs(st.integers(0, 1000)), st.integers(0, 2**62 - 1), st.randoms())
def test_digest_is_the_content_whatever_the_order_and_revision(
        value: Catalog, revision: int, shuffle: object) -> None:
    services, nodes = list(value.services.values()), list(value.nodes.values())
    shuffle.shuffle(services)  # type: ignore[attr-defined]
    shuffle.shuffle(nodes)  # type: ignore[attr-defined]
    same = Catalog(services, nodes, revision)
    assert catalog_digest(same) == catalog_digest(value)
    settings = held_settings(revision, catalog_digest(value))
    assert held_from_settings(settings) == (revision, catalog_digest(value))
    assert all(0 <= v < 2**62 for v in settings.values()), "fits a hello setting"


@_settings
@given(_catalogs(st.just(1)), _catalogs(st.just(1)))
def test_different_content_different_digest(one: Catalog, two: Catalog) -> None:
    assert (catalog_digest(one) == catalog_digest(two)) == (one == two)


@_settings
@given(_catalogs(st.integers(0, 1000)), _catalogs(st.integers(1001, 2000)))
def test_what_an_edge_rebuilds_has_the_routers_digest(old: Catalog, new: Catalog) -> None:
    """The edge digests the catalog it rebuilt from a snapshot or a delta; the router digests
    the one it pushed: a rebase needs them equal."""
    from_snapshot = catalog_from_wire(_through_msgpack(catalog_to_wire(new)))
    assert catalog_digest(from_snapshot) == catalog_digest(new)
    delta = delta_from_wire(_through_msgpack(delta_to_wire(diff_catalogs(old, new))))
    assert catalog_digest(apply_delta(old, delta)) == catalog_digest(new)


def test_settings_of_an_older_edge_say_nothing() -> None:
    assert held_from_settings({"move": 1}) is None
    assert held_from_settings({"catalog_revision": 1, "catalog_digest_hi": 1}) is None
    assert held_settings(2**62, catalog_digest(catalog(1))) == {}, "too large: a snapshot"


def test_rebase_wire_may_end_at_or_below_its_base() -> None:
    wire = delta_to_wire(CatalogDelta(900, 3, rebase=True))
    back = delta_from_wire(wire)
    assert (back.base, back.revision, back.rebase) == (900, 3, True)
    with pytest.raises(DeltaError, match="does not follow base"):
        delta_from_wire({**wire, "rebase": False})
    with pytest.raises(DeltaError, match="rebase: must be a boolean"):
        delta_from_wire({**wire, "rebase": 1})


# -- the edge: a first delta from its own revision ---------------------------------------------


def rebase(base: int, old: Catalog, new: Catalog) -> dict[str, object]:
    change = diff_catalogs(old, new)
    return delta_to_wire(CatalogDelta(base, new.revision, change.services,
                                      change.removed_services, change.nodes,
                                      change.removed_nodes, rebase=True))


def test_a_first_delta_from_this_edges_revision_is_taken_even_downwards(
        tmp_path: Path) -> None:
    edge, old_link, new_link = Edge(tmp_path), FakeLink(), FakeLink()
    held = catalog(900, web(("10.1.0.9",)))
    edge.push(old_link, "snapshot", 900, snapshot_of(held))
    there = catalog(3, web(("10.1.0.3",)))  # another replica numbers from lower
    edge.push(new_link, "delta", 3, rebase(900, held, there))
    assert edge.catalog == there and not new_link.closed
    assert new_link.acks() == [3]
    # The link is in sync now: the replica's next delta follows from 3.
    four = catalog(4, web(("10.1.0.4",)))
    edge.push(new_link, "delta", 4, delta_between(there, four))
    assert edge.catalog == four and new_link.acks() == [3, 4]


def test_an_empty_rebase_at_the_same_revision_syncs_the_link(tmp_path: Path) -> None:
    edge, link = Edge(tmp_path, start=catalog(5)), FakeLink()
    edge.push(link, "delta", 5, rebase(5, catalog(5), catalog(5)))
    assert edge.catalog == catalog(5) and link.acks() == [5] and not link.closed
    assert edge.follower.synced_link is link


def test_a_first_delta_from_another_revision_drops_the_link(tmp_path: Path) -> None:
    edge, link = Edge(tmp_path, start=catalog(7)), FakeLink()
    edge.push(link, "delta", 3, rebase(6, catalog(6), catalog(3, web(("10.1.0.3",)))))
    assert link.closed and link.why == "catalog delta before a snapshot"
    assert edge.catalog == catalog(7) and link.acks() == []


def test_a_rebase_on_a_link_in_sync_drops_it(tmp_path: Path) -> None:
    edge, link = Edge(tmp_path, start=catalog(5)), FakeLink()
    edge.push(link, "delta", 5, rebase(5, catalog(5), catalog(5)))
    edge.push(link, "delta", 2, rebase(5, catalog(5), catalog(2, web(("10.1.0.2",)))))
    assert link.closed and link.why == "catalog rebase after the first push"
    assert edge.catalog == catalog(5)


# -- the router: rebase or snapshot, by digest -------------------------------------------------


def connect(router: Router, held: tuple[int, bytes] | None,
            name: str = "edge-1") -> tuple[str, FakeLink]:
    link = FakeLink()
    state = EdgeState(name, router.clock.seconds(), link)  # type: ignore[arg-type]
    router.states.append(state)
    return router.pusher.first_push(state, held), link


def test_same_content_under_another_revision_gets_an_empty_rebase() -> None:
    router = Router()
    router.current = catalog(40)
    kind, link = connect(router, (9, catalog_digest(catalog(9))))
    (push,) = link.pushes()
    assert (kind, push.kind, push.revision) == ("rebase", "delta", 40)
    delta = delta_from_wire(push.payload)
    assert (delta.base, delta.rebase, delta.empty) == (9, True, True)
    assert router.pusher.pushes == {"snapshot": 0, "delta": 0, "rebase": 1}
    # Then deltas as usual, from the router's own revision.
    router.change(catalog(41, web(("10.1.0.41",))))
    assert link.pushes()[-1].payload["base"] == 40


def test_a_kept_older_catalog_gets_a_rebase_with_the_change() -> None:
    router = Router()
    old = catalog(10, web(("10.1.0.10",)))
    router.change(old)
    connect(router, None, "edge-2")  # the pusher saw revision 10
    router.change(catalog(11, web(("10.1.0.11",)), web(name="api")))
    kind, link = connect(router, (77, catalog_digest(old.with_revision(77))))
    (push,) = link.pushes()
    delta = delta_from_wire(push.payload)
    assert kind == "rebase" and (delta.base, delta.revision) == (77, 11)
    assert sorted(s.key for s in delta.services) == ["default/api", "default/web"]


def test_unknown_content_or_no_digest_gets_a_snapshot() -> None:
    router = Router()
    kind, link = connect(router, (1, catalog_digest(catalog(1, web(("10.9.9.9",))))))
    assert kind == "snapshot" and link.pushes()[0].kind == "snapshot"
    kind, link = connect(router, None, "edge-2")
    assert kind == "snapshot" and link.pushes()[0].kind == "snapshot"
    assert router.pusher.pushes["snapshot"] == 2


# -- end to end: the hello carries the digest ---------------------------------------------------


def test_a_reconnecting_edge_with_the_same_content_gets_a_rebase(tmp_path: Path) -> None:
    reactor = MemoryReactorClock()
    mesh = Mesh(reactor, tmp_path)
    edge = mesh.edge("edge-1")
    mesh.flush()
    assert edge.catalog == catalog(1) and mesh.router.pusher.pushes["snapshot"] == 1
    edge.links[ROUTER_PEER].close_now("test")
    mesh.flush()
    # As another replica would: the same content, its own revision.
    mesh.router.set_catalog(catalog(50))
    for _ in range(10):  # the tunnel's reconnect backoff
        reactor.advance(1)
    pump = ConnectionCompleter(reactor).succeedOnce()
    assert pump is not None
    pump.flush()
    assert mesh.router.pusher.pushes == {"snapshot": 1, "delta": 0, "rebase": 1}
    assert edge.catalog == catalog(50)
    assert mesh.router.edges["edge-1"].acked == 50
