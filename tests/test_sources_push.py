"""Catalog pushes (roles/_push.py): the router's per-edge deltas and throttle, the edge's
revision rules, durable acks and serialized writes; then a router and two edges on one
MemoryReactorClock, joined by iosim."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs
from twisted.test.iosim import ConnectionCompleter, IOPump

from edgemesh.catalog import (
    Catalog,
    CatalogStore,
    Endpoint,
    Node,
    Service,
    ServicePort,
    catalog_to_wire,
    delta_to_wire,
    diff_catalogs,
)
from edgemesh.roles import EdgeConfig, RouterConfig, build_edge, build_router
from edgemesh.roles._push import CatalogFollower
from edgemesh.roles._pusher import CatalogPusher, EdgeState
from edgemesh.routing import ROUTER_PEER
from edgemesh.wire import Ack, CatalogPush, Limits, decode_payload

# -- values ----------------------------------------------------------------------------------


def web(hosts: tuple[str, ...] = ("10.1.0.1",), name: str = "web") -> Service:
    return Service("default", name, None, (ServicePort("", 80, 8080),),
                   {"": tuple(Endpoint(h, 8080, "edge-1") for h in hosts)})


def catalog(revision: int, *services: Service) -> Catalog:
    nodes = [Node("edge-1", True, "127.0.0.1", 7701), Node("edge-2", True, "127.0.0.2", 7701)]
    return Catalog(services or [web()], nodes, revision)


def many(revision: int, count: int, changed: int = -1) -> Catalog:
    return Catalog([web(("10.1.0.2",) if i == changed else ("10.1.0.1",), f"s{i}")
                    for i in range(count)], [], revision)


def decode(frame: bytes) -> Any:
    return decode_payload(frame[4:], Limits())


@dataclass
class FakeLink:
    """What the pusher and the follower use of an EnvelopeLink."""

    sent: list[Any] = field(default_factory=list)
    closed: bool = False
    why: str | None = None

    def send_control(self, data: bytes) -> None:
        assert not self.closed
        self.sent.append(decode(data))

    def close_now(self, why: str) -> None:
        self.closed, self.why = True, why

    def pushes(self) -> list[CatalogPush]:
        return [f for f in self.sent if isinstance(f, CatalogPush)]

    def acks(self) -> list[int]:
        return [f.revision for f in self.sent if isinstance(f, Ack)]


# -- router side -------------------------------------------------------------------------------


class Router:
    def __init__(self, interval: float = 0.05) -> None:
        self.clock = Clock()
        self.current = catalog(1)
        self.pusher = CatalogPusher(self.clock, lambda: self.current, interval)
        self.states: list[EdgeState] = []

    def connect(self, name: str = "edge-1") -> tuple[EdgeState, FakeLink]:
        link = FakeLink()
        state = EdgeState(name, self.clock.seconds(), link)  # type: ignore[arg-type]
        self.states.append(state)
        self.pusher.snapshot(state)
        return state, link

    def change(self, new: Catalog) -> None:
        self.current = new
        self.pusher.changed(self.states)


def test_connect_gets_a_snapshot_then_deltas() -> None:
    router = Router()
    state, link = router.connect()
    (snapshot,) = link.pushes()
    assert (snapshot.kind, snapshot.revision) == ("snapshot", 1)
    router.change(catalog(2, web(("10.1.0.9",))))
    delta = link.pushes()[-1]
    assert (delta.kind, delta.revision) == ("delta", 2)
    assert delta.payload["base"] == 1
    assert [s[1] for s in delta.payload["services"]] == ["web"]
    assert state.sent == 2 and state.sent_catalog is router.current


def test_a_burst_is_throttled_per_edge_and_ends_on_the_newest() -> None:
    router = Router(interval=0.05)
    _, link = router.connect()
    for revision in range(2, 502):  # a rollout: 500 changes within 0.5 s
        router.change(catalog(revision, web((f"10.1.{revision // 250}.{revision % 250}",))))
        router.clock.advance(0.001)
    router.clock.advance(1)
    pushes = link.pushes()
    assert len(pushes) <= 1 + 12, f"{len(pushes)} pushes for 500 changes"
    assert pushes[-1].revision == 501
    # Every delta starts where the previous push ended: an edge can apply them all.
    for before, after in itertools.pairwise(pushes):
        assert after.payload["base"] == before.revision


def test_first_change_after_a_quiet_time_goes_at_once() -> None:
    router = Router(interval=0.05)
    _, link = router.connect()
    router.change(catalog(2, web(("10.1.0.2",))))
    router.clock.advance(10)
    router.change(catalog(3, web(("10.1.0.3",))))
    assert [p.revision for p in link.pushes()] == [1, 2, 3]
    assert router.clock.getDelayedCalls() == []


def test_frames_are_encoded_once_for_every_edge(monkeypatch: pytest.MonkeyPatch) -> None:
    import edgemesh.roles._pusher as push

    calls: list[str] = []
    real = push.encode_catalog

    def counting(revision: int, kind: str, payload: dict[str, Any]) -> bytes:
        calls.append(kind)
        return real(revision, kind, payload)

    monkeypatch.setattr(push, "encode_catalog", counting)
    router = Router()
    links = [router.connect(f"edge-{i}")[1] for i in range(50)]
    router.change(catalog(2, web(("10.1.0.7",))))
    assert calls == ["snapshot", "delta"]
    assert all(link.pushes()[-1].revision == 2 for link in links)


def test_a_delta_larger_than_half_the_catalog_goes_as_a_snapshot() -> None:
    router = Router()
    router.current = many(1, 40)
    _, link = router.connect()
    router.change(many(2, 40, changed=3))
    assert link.pushes()[-1].kind == "delta"
    router.clock.advance(1)
    router.change(Catalog([web(("10.9.9.9",), f"s{i}") for i in range(40)], [], 3))
    assert link.pushes()[-1].kind == "snapshot"


def test_acks_only_move_forward() -> None:
    state = EdgeState("edge-1", 0.0, FakeLink())  # type: ignore[arg-type]
    for revision in (3, 5, 4, 5, 1):
        CatalogPusher.acked(state, revision)
    assert state.acked == 5


def test_cancel_stops_a_pending_push() -> None:
    router = Router()
    state, _link = router.connect()
    router.change(catalog(2, web(("10.1.0.2",))))
    router.change(catalog(3, web(("10.1.0.3",))))
    assert router.clock.getDelayedCalls() != []
    router.pusher.cancel(state)
    assert router.clock.getDelayedCalls() == []


# -- edge side ---------------------------------------------------------------------------------


class Edge:
    """A CatalogFollower whose writes finish when the test says (a 'thread')."""

    def __init__(self, tmp_path: Path, threaded: bool = False,
                 start: Catalog | None = None) -> None:
        self.store = CatalogStore(str(tmp_path))
        self.catalog = start or Catalog.empty()
        self.writes: list[tuple[Deferred[None], Any]] = []
        self.saved: list[int] = []
        self.threaded = threaded

        def run(work: Any) -> Deferred[None]:
            if not threaded:
                work()
                return succeed(None)
            pending: Deferred[None] = Deferred()
            self.writes.append((pending, work))
            return pending

        real_save = self.store.save

        def save(value: Catalog) -> None:
            real_save(value)
            self.saved.append(value.revision)

        self.store.save = save  # type: ignore[method-assign]
        self.follower = CatalogFollower(self.store, lambda: self.catalog, self._set, run)

    def _set(self, value: Catalog) -> None:
        self.catalog = value

    def finish_write(self) -> None:
        pending, work = self.writes.pop(0)
        work()
        pending.callback(None)

    def push(self, link: FakeLink, kind: str, revision: int, payload: dict[str, Any]) -> None:
        self.follower.apply(link, CatalogPush(revision, kind, payload))  # type: ignore[arg-type]


def snapshot_of(value: Catalog) -> dict[str, Any]:
    return catalog_to_wire(value)


def delta_between(old: Catalog, new: Catalog) -> dict[str, Any]:
    return delta_to_wire(diff_catalogs(old, new))


def test_snapshot_then_delta_applied_stored_and_acked(tmp_path: Path) -> None:
    edge, link = Edge(tmp_path), FakeLink()
    one, two = catalog(1), catalog(2, web(("10.1.0.2",)))
    edge.push(link, "snapshot", 1, snapshot_of(one))
    edge.push(link, "delta", 2, delta_between(one, two))
    assert edge.catalog == two
    assert link.acks() == [1, 2] and edge.saved == [1, 2]
    assert CatalogStore(str(tmp_path)).load() == (two, [])


def test_first_snapshot_on_a_link_is_taken_whatever_its_revision(tmp_path: Path) -> None:
    """A restarted router may count from lower (a file source is always revision 0)."""
    edge = Edge(tmp_path, start=catalog(900))
    old_link, new_link = FakeLink(), FakeLink()
    edge.push(old_link, "snapshot", 900, snapshot_of(catalog(900)))
    edge.push(new_link, "snapshot", 0, snapshot_of(catalog(0, web(("10.7.0.1",)))))
    assert edge.catalog == catalog(0, web(("10.7.0.1",)))
    assert new_link.acks() == [0]


def test_duplicate_and_older_pushes_change_nothing_and_are_acked(tmp_path: Path) -> None:
    edge, link = Edge(tmp_path), FakeLink()
    one, two, three = catalog(1), catalog(2, web(("10.1.0.2",))), catalog(3, web(("10.1.0.3",)))
    edge.push(link, "snapshot", 1, snapshot_of(one))
    edge.push(link, "delta", 2, delta_between(one, two))
    edge.push(link, "delta", 3, delta_between(two, three))
    saves = list(edge.saved)
    # Duplicates, a reordered older delta, an older snapshot: harmless.
    edge.push(link, "delta", 3, delta_between(two, three))
    edge.push(link, "delta", 2, delta_between(one, two))
    edge.push(link, "snapshot", 1, snapshot_of(one))
    edge.push(link, "snapshot", 3, snapshot_of(three))
    assert edge.catalog == three
    assert edge.saved == saves, "nothing written again"
    assert link.acks() == [1, 2, 3, 3, 3, 3, 3]
    assert not link.closed


def test_a_gap_drops_the_link_for_a_resync(tmp_path: Path) -> None:
    edge, link = Edge(tmp_path), FakeLink()
    one, two, three = catalog(1), catalog(2, web(("10.1.0.2",))), catalog(3, web(("10.1.0.3",)))
    edge.push(link, "snapshot", 1, snapshot_of(one))
    with capturedLogs() as events:
        edge.push(link, "delta", 3, delta_between(two, three))
    assert link.closed and link.why == "catalog gap"
    assert edge.catalog == one
    assert any("resyncing" in e["log_format"] for e in events)


def test_a_delta_before_any_snapshot_on_this_link_drops_it(tmp_path: Path) -> None:
    """Unless it starts at this edge's revision (a rebase: tests/test_rebase.py)."""
    edge, first, second = Edge(tmp_path), FakeLink(), FakeLink()
    one, two, three = catalog(1), catalog(2, web(("10.1.0.2",))), catalog(3, web(("10.1.0.3",)))
    edge.push(first, "snapshot", 1, snapshot_of(one))
    edge.push(second, "delta", 3, delta_between(two, three))
    assert second.closed and edge.catalog == one


@pytest.mark.parametrize("payload", [
    {"format": "edgemesh.catalog.delta", "version": 1},
    {"format": "nope"},
    {**delta_to_wire(diff_catalogs(catalog(1), catalog(2, web(("10.1.0.2",))))),
     "revision": 7},
], ids=["missing-fields", "format", "revision-mismatch"])
def test_invalid_deltas_drop_the_link(tmp_path: Path, payload: dict[str, Any]) -> None:
    edge, link = Edge(tmp_path), FakeLink()
    edge.push(link, "snapshot", 1, snapshot_of(catalog(1)))
    edge.push(link, "delta", 2, payload)
    assert link.closed and edge.catalog == catalog(1)


def test_ack_waits_for_the_write_and_writes_are_serialized(tmp_path: Path) -> None:
    edge, link = Edge(tmp_path, threaded=True), FakeLink()
    versions = [catalog(1)] + [catalog(r, web((f"10.1.0.{r}",))) for r in range(2, 6)]
    edge.push(link, "snapshot", 1, snapshot_of(versions[0]))
    assert edge.catalog == versions[0], "routing follows at once"
    assert link.acks() == [] and len(edge.writes) == 1
    for before, after in itertools.pairwise(versions):
        edge.push(link, "delta", after.revision, delta_between(before, after))
    assert edge.catalog == versions[-1]
    assert len(edge.writes) == 1, "one write at a time"
    edge.finish_write()
    assert link.acks() == [1]
    # The write that was waiting is the newest only: 2, 3 and 4 are never written.
    assert len(edge.writes) == 1
    edge.finish_write()
    assert edge.saved == [1, 5] and link.acks() == [1, 5]
    assert edge.follower.idle()


def test_duplicate_during_a_write_is_acked_by_the_write(tmp_path: Path) -> None:
    edge, link = Edge(tmp_path, threaded=True), FakeLink()
    edge.push(link, "snapshot", 1, snapshot_of(catalog(1)))
    edge.push(link, "snapshot", 1, snapshot_of(catalog(1)))
    assert link.acks() == []
    edge.finish_write()
    assert link.acks() == [1]


def test_failed_write_is_not_acked_and_the_next_one_goes(tmp_path: Path) -> None:
    edge, link = Edge(tmp_path, threaded=True), FakeLink()
    edge.push(link, "snapshot", 1, snapshot_of(catalog(1)))
    edge.push(link, "delta", 2, delta_between(catalog(1), catalog(2, web(("10.1.0.2",)))))
    pending, _ = edge.writes.pop(0)
    with capturedLogs() as events:
        pending.errback(OSError(28, "No space left on device"))
    assert link.acks() == []
    assert any(e["log_level"] is LogLevel.error and e.get("revision") == 1 for e in events)
    edge.finish_write()
    assert link.acks() == [2]


def test_no_ack_on_a_link_closed_during_the_write(tmp_path: Path) -> None:
    edge, link = Edge(tmp_path, threaded=True), FakeLink()
    edge.push(link, "snapshot", 1, snapshot_of(catalog(1)))
    link.closed = True
    edge.finish_write()
    assert link.acks() == [] and edge.saved == [1]


# -- a router and two edges on one memory reactor ---------------------------------------------


@pytest.fixture
def reactor() -> MemoryReactorClock:
    return MemoryReactorClock()


def start(node: Any) -> None:
    node.privilegedStartService()
    node.startService()


class Mesh:
    def __init__(self, reactor: MemoryReactorClock, tmp_path: Path, **router: Any) -> None:
        self.reactor = reactor
        self.tmp_path = tmp_path
        self.router = build_router(reactor, RouterConfig(catalog=catalog(1), **router))
        start(self.router)
        self.pumps: list[IOPump] = []

    def edge(self, name: str) -> Any:
        edge = build_edge(self.reactor, EdgeConfig(
            node=name, state_dir=str(self.tmp_path / name), router="tcp:127.0.0.1:7700",
            hub=None, proxy=None))
        start(edge)
        pump = ConnectionCompleter(self.reactor).succeedOnce()
        assert pump is not None
        pump.flush()
        self.pumps.append(pump)
        return edge

    def flush(self) -> None:
        for _ in range(3):
            for pump in self.pumps:
                pump.flush()


def test_changes_reach_every_edge_as_deltas_and_are_acked(reactor: MemoryReactorClock,
                                                          tmp_path: Path) -> None:
    mesh = Mesh(reactor, tmp_path)
    edges = [mesh.edge("edge-1"), mesh.edge("edge-2")]
    mesh.flush()
    assert [mesh.router.edges[n].acked for n in ("edge-1", "edge-2")] == [1, 1]
    current = mesh.router.catalog
    for revision in range(2, 12):
        current = catalog(revision, web((f"10.1.0.{revision}",)), web(name=f"extra-{revision}"))
        mesh.router.set_catalog(current)
        reactor.advance(0.01)
        mesh.flush()
    reactor.advance(1)
    mesh.flush()
    for edge in edges:
        assert edge.catalog == current
        assert CatalogStore(edge.store.directory).load() == (current, [])
    for name in ("edge-1", "edge-2"):
        state = mesh.router.edges[name]
        assert state.acked == 11
        assert state.pushes < 11, "coalesced"
    assert [row["lag"] for row in mesh.router.edges_view()] == [0, 0]


def test_pending_router_pushes_nothing_until_the_first_catalog(reactor: MemoryReactorClock,
                                                               tmp_path: Path) -> None:
    mesh = Mesh(reactor, tmp_path, catalog_pending=True)
    stored = catalog(7, web(("10.5.0.5",)))
    CatalogStore(str(tmp_path / "edge-1")).save(stored)
    edge = mesh.edge("edge-1")
    mesh.flush()
    assert edge.catalog == stored, "the edge keeps its own catalog"
    assert "edge-1" not in mesh.router.edges, "refused (not ready) until the catalog is listed"
    # The watch lists: revision 3 < 7, yet the first snapshot on a link wins.
    mesh.router.set_catalog(catalog(3))
    reactor.advance(edge.tunnel.backoff.last_delay)  # the edge comes back after its backoff
    pump = ConnectionCompleter(reactor).succeedOnce()
    assert pump is not None
    mesh.pumps.append(pump)
    mesh.flush()
    assert edge.catalog == catalog(3)
    assert mesh.router.edges["edge-1"].acked == 3


def test_set_catalog_keeps_revisions_growing(reactor: MemoryReactorClock, tmp_path: Path) -> None:
    mesh = Mesh(reactor, tmp_path)
    edge = mesh.edge("edge-1")
    mesh.flush()
    mesh.router.set_catalog(catalog(1, web(("10.1.0.77",))))
    mesh.flush()
    assert mesh.router.catalog.revision == 2
    assert edge.catalog == mesh.router.catalog


def test_reconnect_gets_a_snapshot(reactor: MemoryReactorClock, tmp_path: Path) -> None:
    mesh = Mesh(reactor, tmp_path)
    edge = mesh.edge("edge-1")
    mesh.flush()
    edge.links[ROUTER_PEER].close_now("test")
    mesh.flush()
    assert "edge-1" not in mesh.router.edges
    mesh.router.set_catalog(catalog(5, web(("10.1.0.5",))))
    for _ in range(10):  # the tunnel's reconnect backoff
        reactor.advance(1)
    pump = ConnectionCompleter(reactor).succeedOnce()
    assert pump is not None
    pump.flush()
    assert edge.catalog == catalog(5, web(("10.1.0.5",)))
    assert mesh.router.edges["edge-1"].acked == 5
