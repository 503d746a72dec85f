"""Need-based push: the scope grammar, the views cut from a catalog (pure, hypothesis), and
the router's pusher sending each edge its view only: nothing at all for a change outside it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.python import usage

from edgemesh.catalog import (
    ALL,
    EXPORT_ANNOTATION,
    Catalog,
    Endpoint,
    Node,
    Scope,
    ScopeError,
    Service,
    ServicePort,
    apply_delta,
    catalog_from_wire,
    catalog_to_wire,
    delta_from_wire,
    parse_node,
    scope_view,
)
from edgemesh.roles import RouterConfig, build_router
from edgemesh.roles._pusher import CatalogPusher, EdgeState
from edgemesh.roles.router_tap import Options as RouterOptions
from edgemesh.wire import CatalogPush, Limits, decode_payload

NAMESPACES = ("shop", "iot", "video", "kube-system")
NODES = ("edge-1", "edge-2", "edge-3", "cloud-1")


def service(namespace: str, name: str, nodes: tuple[str, ...] = (),
            exported: bool = False) -> Service:
    endpoints = tuple(Endpoint(f"10.0.{i}.{len(name)}", 8080, n) for i, n in enumerate(nodes))
    return Service(namespace, name, None, (ServicePort("", 80, 8080),), {"": endpoints},
                   {EXPORT_ANNOTATION: "true"} if exported else {})


def nodes(scopes: dict[str, str] | None = None) -> list[Node]:
    scopes = scopes or {}
    return [Node(n, n.startswith("edge"), f"127.0.0.{i + 1}", 7701, scope=scopes.get(n))
            for i, n in enumerate(NODES)]


def sample(revision: int = 1, scopes: dict[str, str] | None = None) -> Catalog:
    return Catalog([
        service("shop", "web", ("edge-1",)),
        service("shop", "cart", ("edge-2",)),
        service("iot", "broker", ("cloud-1",), exported=True),
        service("video", "transcode", ("edge-2", "edge-3")),
        service("kube-system", "dns", ("cloud-1",)),
    ], nodes(scopes), revision)


# -- the grammar ------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "scope"), [
    ("all", ALL),
    ("local", Scope(everything=False, local=True)),
    ("shop", Scope(everything=False, namespaces=frozenset({"shop"}))),
    ("local, shop kube-system", Scope(False, True, frozenset({"shop", "kube-system"}))),
])
def test_scopes_parse(text: str, scope: Scope) -> None:
    assert Scope.parse(text) == scope
    assert Scope.parse(str(scope)) == scope


@pytest.mark.parametrize("text", ["", " , ", "all shop", "Shop", "a_b", "x" * 64, "-a"])
def test_bad_scopes_are_refused_with_a_reason(text: str) -> None:
    with pytest.raises(ScopeError):
        Scope.parse(text)


def test_the_router_option_is_checked_at_start() -> None:
    options = RouterOptions()
    with pytest.raises(usage.UsageError, match="--edge-scope"):
        options.parseOptions(["--catalog", "examples/demo-catalog.yaml", "--insecure",
                              "--edge-scope", "all shop"])


def test_a_node_annotation_is_read_into_the_node() -> None:
    node = parse_node({"apiVersion": "v1", "kind": "Node", "metadata": {
        "name": "edge-1", "labels": {"node-role.kubernetes.io/edge": ""},
        "annotations": {"edgemesh.io/scope": "local shop"}}})
    assert node.scope == "local shop"
    # The router's business only: an edge's copy has none.
    round_trip = catalog_from_wire(catalog_to_wire(Catalog([], [node], 1)))
    assert round_trip.nodes["edge-1"].scope is None


# -- views --------------------------------------------------------------------------------

def keys(catalog: Catalog) -> set[str]:
    return set(catalog.services)


def test_all_is_the_catalog_itself() -> None:
    whole = sample()
    assert scope_view(whole, "edge-1", ALL) is whole


def test_namespaces_local_and_exports() -> None:
    whole = sample()
    assert keys(scope_view(whole, "edge-1", Scope.parse("shop"))) == {
        "shop/web", "shop/cart", "iot/broker"}
    # edge-3 runs a pod of video: it receives that Service whatever its scope.
    assert keys(scope_view(whole, "edge-3", Scope.parse("kube-system"))) == {
        "kube-system/dns", "iot/broker", "video/transcode"}
    # edge-2 runs pods of shop and video.
    assert keys(scope_view(whole, "edge-2", Scope.parse("local"))) == {
        "shop/web", "shop/cart", "video/transcode", "iot/broker"}
    assert keys(scope_view(whole, "edge-3", Scope.parse("local kube-system"))) == {
        "video/transcode", "kube-system/dns", "iot/broker"}


def test_a_view_holds_its_own_node_and_those_its_endpoints_run_on() -> None:
    view = scope_view(sample(), "edge-1", Scope.parse("shop"))
    assert set(view.nodes) == {"edge-1", "edge-2", "cloud-1"}
    assert view.revision == 1


def test_an_unknown_name_outside_the_view_is_unknown() -> None:
    view = scope_view(sample(), "edge-1", Scope.parse("shop"))
    view.resolve(b"web.shop")
    with pytest.raises(Exception, match="unknown|no service"):
        view.resolve(b"transcode.video")


catalogs = st.builds(
    lambda picks, revision: Catalog(
        [service(ns, f"s{i}", tuple(n for n in NODES if (mask >> NODES.index(n)) & 1), exp)
         for i, (ns, mask, exp) in enumerate(picks)], nodes(), revision),
    st.lists(st.tuples(st.sampled_from(NAMESPACES), st.integers(0, 15), st.booleans()),
             max_size=12),
    st.integers(0, 100))
scopes = st.one_of(st.just(ALL), st.builds(
    lambda local, namespaces: Scope(False, local, frozenset(namespaces)),
    st.booleans(), st.sets(st.sampled_from(NAMESPACES))))


# No deadline: cutting views of large catalogs ran past 200 ms once on a loaded machine.
@settings(max_examples=200, deadline=None)
@given(catalogs, scopes, st.sampled_from(NODES))
def test_a_view_is_exactly_what_the_scope_says(whole: Catalog, scope: Scope, node: str) -> None:
    view = scope_view(whole, node, scope)
    assert view.revision == whole.revision
    if scope.everything:
        assert view == whole
        return
    local = {s.namespace for s in whole.services.values()
             for e in s.endpoints.get("", ()) if e.node == node}
    for key, svc in whole.services.items():
        own = any(e.node == node for e in svc.endpoints.get("", ()))
        wanted = (svc.namespace in scope.namespaces or (scope.local and svc.namespace in local)
                  or svc.annotations.get(EXPORT_ANNOTATION) == "true" or own)
        assert (key in view.services) == wanted
        if wanted:
            assert view.services[key] is svc  # shared, not copied
    needed = {e.node for s in view.services.values() for e in s.endpoints.get("", ())}
    assert needed <= set(view.nodes)
    assert set(view.nodes) <= needed | {node}
    assert scope_view(view, node, scope) == view


# -- the pusher: deltas of views ------------------------------------------------------------------

def decode(frame: bytes) -> Any:
    return decode_payload(frame[4:], Limits())


@dataclass
class CountingLink:
    frames: list[bytes] = field(default_factory=list)
    closed: bool = False

    def send_control(self, data: bytes) -> None:
        self.frames.append(data)

    @property
    def bytes(self) -> int:
        return sum(len(f) for f in self.frames)

    def pushes(self) -> list[CatalogPush]:
        return [p for f in self.frames if isinstance(p := decode(f), CatalogPush)]


class Router:
    def __init__(self, scopes: dict[str, Scope]) -> None:
        self.clock = Clock()
        self.current = sample(1)
        self.pusher = CatalogPusher(self.clock, lambda: self.current, 0.0,
                                    lambda node, catalog: scopes.get(node, ALL))
        self.states: dict[str, tuple[EdgeState, CountingLink]] = {}

    def connect(self, node: str) -> CountingLink:
        link = CountingLink()
        state = EdgeState(node, 0.0, link)  # type: ignore[arg-type]
        self.states[node] = (state, link)
        self.pusher.snapshot(state)
        return link

    def change(self, new: Catalog) -> None:
        self.current = new
        self.pusher.changed([s for s, _ in self.states.values()])
        self.clock.advance(1)


def replaced(whole: Catalog, revision: int, new: Service) -> Catalog:
    services = {**whole.services, new.key: new}
    return Catalog(services, whole.nodes, revision)


def test_a_change_outside_an_edges_view_sends_it_zero_bytes() -> None:
    router = Router({"edge-1": Scope.parse("shop"), "edge-3": Scope.parse("local")})
    shop, video, full = router.connect("edge-1"), router.connect("edge-3"), router.connect("edge-2")
    before = (shop.bytes, video.bytes, full.bytes)
    router.change(replaced(router.current, 2, service("kube-system", "dns", ("edge-2",))))
    assert shop.bytes == before[0] and video.bytes == before[1]
    assert full.bytes > before[2]
    state, _ = router.states["edge-1"]
    assert state.sent == 1 and router.pusher.lag(state) is None  # never acked yet
    state.acked = 1
    assert router.pusher.lag(state) == 0
    # A change inside it is a delta from what that edge holds, to the newest revision.
    router.change(replaced(router.current, 3, service("shop", "web", ("edge-1", "edge-2"))))
    push = shop.pushes()[-1]
    assert (push.kind, push.revision, push.payload["base"]) == ("delta", 3, 1)
    edge_view = catalog_from_wire(shop.pushes()[0].payload).with_revision(1)
    after = apply_delta(edge_view, delta_from_wire(push.payload))
    assert after == scope_view(router.current, "edge-1", Scope.parse("shop")).with_revision(3)
    assert len(video.pushes()) == 1


def test_a_scope_is_a_fraction_of_the_snapshot() -> None:
    whole = Catalog([service(f"ns{i % 10}", f"s{i}", ("cloud-1",)) for i in range(200)],
                    nodes(), 1)
    router = Router({"edge-1": Scope.parse("ns1")})
    router.current = whole
    scoped, everything = router.connect("edge-1"), router.connect("edge-2")
    assert scoped.bytes <= 0.15 * everything.bytes


def test_the_node_annotation_overrides_the_router_option(tmp_path: Any) -> None:
    from twisted.internet.testing import MemoryReactorClock

    router = build_router(MemoryReactorClock(), RouterConfig(
        catalog=sample(1, {"edge-1": "shop", "edge-2": "no_such ns"}),
        edge_scope=Scope.parse("video")))
    catalog = router.catalog
    assert router.scope_of("edge-1", catalog) == Scope.parse("shop")
    assert router.scope_of("edge-3", catalog) == Scope.parse("video")
    with capturedLogs() as events:
        assert router.scope_of("edge-2", catalog) == Scope.parse("video")
        assert router.scope_of("edge-2", catalog) == Scope.parse("video")
    warnings = [e for e in events if e["log_level"] is LogLevel.warn]
    assert len(warnings) == 1 and "edgemesh.io/scope" in warnings[0]["name"]


# -- incremental views equal views cut from scratch ------------------------------------------

edits = st.lists(st.tuples(
    st.integers(0, 7),                      # which service (s0..s7)
    st.one_of(st.none(), st.tuples(st.sampled_from(NAMESPACES), st.integers(0, 15),
                                   st.booleans())),   # None: removed; else its new form
    st.one_of(st.none(), st.tuples(st.sampled_from(NODES), st.integers(0, 9))),
), min_size=1, max_size=4)


def apply_edits(whole: Catalog, revision: int, batch: list[Any]) -> Catalog:
    services = dict(whole.services)
    node_records = dict(whole.nodes)
    for index, form, node_edit in batch:
        for key in [k for k in services if k.endswith(f"/s{index}")]:
            del services[key]
        if form is not None:
            namespace, mask, exported = form
            new = service(namespace, f"s{index}",
                          tuple(n for n in NODES if (mask >> NODES.index(n)) & 1), exported)
            services[new.key] = new
        if node_edit is not None:
            name, port = node_edit
            if port == 9:  # the node goes, or comes back
                if node_records.pop(name, None) is None:
                    node_records[name] = Node(name, name.startswith("edge"), "127.0.0.9", 7701)
            else:
                old = node_records.get(name) or Node(name, True, "127.0.0.9", 7701)
                node_records[name] = Node(name, old.edge, old.hub_host, 7701 + port)
    return Catalog(services, node_records, revision)


@settings(max_examples=150, deadline=None)
@given(catalogs, st.lists(edits, min_size=1, max_size=6), scopes, st.sampled_from(NODES[:3]))
def test_what_an_edge_holds_is_always_its_view_of_the_newest_catalog(
        start: Catalog, batches: list[Any], scope: Scope, node: str) -> None:
    router = Router({node: scope})
    router.current = start.with_revision(1)
    link = router.connect(node)
    held = catalog_from_wire(link.pushes()[0].payload).with_revision(1)
    for revision, batch in enumerate(batches, start=2):
        seen = len(link.frames)
        router.change(apply_edits(router.current, revision, batch))
        for push in link.pushes()[seen:]:
            if push.kind == "snapshot":
                held = catalog_from_wire(push.payload).with_revision(push.revision)
            else:
                delta = delta_from_wire(push.payload)
                assert scope.everything or not delta.empty  # no empty revision bumps
                held = apply_delta(held, delta)
        expected = scope_view(router.current, node, scope)
        assert dict(held.services) == dict(expected.services)
        assert {n: (r.hub_port, r.edge) for n, r in held.nodes.items()} == {
            n: (r.hub_port, r.edge) for n, r in expected.nodes.items()}
        state, _ = router.states[node]
        if scope.everything:
            assert held.revision == router.current.revision
        assert state.sent == held.revision


def test_a_node_that_joins_but_serves_nothing_in_the_view_sends_nothing() -> None:
    router = Router({"edge-1": Scope.parse("shop")})
    link = router.connect("edge-1")
    before = link.bytes
    router.change(Catalog(router.current.services,
                          [*router.current.nodes.values(), Node("edge-9", True, "10.9.9.9", 7701)],
                          2))
    assert link.bytes == before
