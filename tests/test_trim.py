"""Trimmed endpoints (issue 14): an edge's view holds other edge nodes' pods as aggregates
(``catalog/_trim.py``).  The topology decides on aggregates exactly as on the endpoints they
stand for; a hash key lands on the same pod from any edge (two levels: node, then pod); the
balancers weigh an aggregate by its pods; the wire carries aggregates beside the records;
the router's pusher keeps each trimmed view exact, and a change to another node's pod that
leaves its aggregate alike sends nothing."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_catalog_scope import CountingLink, apply_edits, catalogs
from test_topology import worlds
from twisted.internet.task import Clock

from edgemesh.catalog import (
    ALL,
    Catalog,
    Endpoint,
    Node,
    Scope,
    Service,
    ServicePort,
    apply_delta,
    catalog_from_wire,
    catalog_to_wire,
    delta_from_wire,
    diff_catalogs,
    scope_view,
)
from edgemesh.catalog._delta import delta_to_wire
from edgemesh.catalog._trim import aggregate_of, trim_service
from edgemesh.exchange import RequestHead, Role, SourceKind, TargetKind
from edgemesh.roles._push import catalog_digest
from edgemesh.roles._pusher import CatalogPusher, EdgeState
from edgemesh.routing import Balancer, decide, parse_policy, topology_tiers

HTTP = ServicePort("http", 80, 8080)
_settings = settings(max_examples=300, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])


def trimmed(catalog: Catalog, node: str) -> Catalog:
    return scope_view(catalog, node, ALL, trim=True)


def weights(tier: Sequence[Endpoint], own: str, catalog: Catalog) -> Counter[str]:
    """A tier as pods per entry: an endpoint of another edge node counts for its aggregate."""
    found: Counter[str] = Counter()
    for e in tier:
        if e.pods:
            found[e.host] += e.pods
        elif e.node is not None and e.node != own and catalog.is_edge(e.node):
            found[aggregate_of(e)] += 1
        else:
            found[f"{e.host}:{e.port}"] += 1
    return found


# -- the topology on aggregates ----------------------------------------------------------------


@_settings
@given(worlds())
def test_the_topology_chooses_the_same_tiers_on_aggregates(world: Any) -> None:
    catalog, service, me = world
    view = trimmed(catalog, me)
    full = topology_tiers(catalog, me, service, HTTP)
    cut = topology_tiers(view, me, view.services[service.key], HTTP)
    assert [weights(t, me, catalog) for t in full] == [weights(t, me, catalog) for t in cut]
    # This node's own endpoints stay exact; nobody else's address reaches it.
    own = {e for e in service.endpoints["http"] if e.node == me}
    assert own <= set(view.services[service.key].endpoints["http"])
    assert all(e.pods == 0 or e.host.startswith("*") for es in view.services.values()
               for e in es.endpoints["http"])


# -- two-level consistent hash --------------------------------------------------------------


EDGES = [f"e{i}" for i in range(5)]


def hash_world(counts: Sequence[int]) -> Catalog:
    nodes = [Node(n, True, f"10.0.0.{i + 1}", 7701) for i, n in enumerate(EDGES)]
    nodes.append(Node("cloud", False, "10.0.1.1", 7701))
    endpoints = tuple(Endpoint(f"10.1.{i}.{j + 1}", 8080 + j, node)
                      for i, (node, count) in enumerate(zip([*EDGES, "cloud"], counts))
                      for j in range(count))
    # PreferSameZone without zones or pools: one tier, whichever edge asks.
    service = Service("shop", "web", "10.96.0.10", (HTTP,), {"http": endpoints},
                      traffic_distribution="PreferSameZone")
    return Catalog([service], nodes, 1)


def deliver(catalog: Catalog, via: str, head: RequestHead, policy: Any,
            balancers: dict[str, Balancer]) -> tuple[str, int]:
    """Where an exchange that enters on ``via`` (its trimmed view) ends: the pod address."""
    view = trimmed(catalog, via)
    service = view.services["shop/web"]
    route = decide(view, Role.edge, via, SourceKind.service_bus, service, HTTP, None,
                   balancers.setdefault(via, Balancer()), head, policy)
    assert route.endpoint is not None
    if route.target is not TargetKind.hub:
        return route.endpoint.host, route.endpoint.port
    there = route.peer
    assert there is not None and route.endpoint.pods and route.endpoint.node == there
    view = trimmed(catalog, there)
    delivered = decide(view, Role.edge, there, SourceKind.hub, view.services["shop/web"], HTTP,
                       (route.endpoint.host, route.endpoint.port),
                       balancers.setdefault(there, Balancer()), head, policy)
    assert delivered.endpoint is not None and delivered.endpoint.node == there
    return delivered.endpoint.host, delivered.endpoint.port


@_settings
@given(st.lists(st.integers(0, 4), min_size=6, max_size=6).filter(lambda c: sum(c[:5]) > 0),
       st.sampled_from(EDGES), st.sampled_from(EDGES), st.integers(0, 10**6),
       st.booleans())
def test_a_key_lands_on_the_same_pod_from_any_edge(counts: list[int], a: str, b: str,
                                                    key: int, by_client: bool) -> None:
    catalog = hash_world(counts)
    if by_client:  # sessionAffinity: ClientIP (the client's address, carried along)
        policy = parse_policy({}, "ClientIP", 60)
        head = RequestHead(b"GET", b"/", b"web", (), 0, f"192.0.{key % 250}.{key % 251}")
    else:
        policy = parse_policy({"edgemesh.io/lb-policy": "consistent-hash",
                               "edgemesh.io/hash-key": "header:x-user"}, "None", 60)
        head = RequestHead(b"GET", b"/", b"web", ((b"x-user", b"%d" % key),), 0, "192.0.2.1")
    assert deliver(catalog, a, head, policy, {}) == deliver(catalog, b, head, policy, {})


def test_a_node_gets_keys_in_proportion_to_its_pods() -> None:
    catalog = hash_world([1, 3, 0, 0, 0, 0])
    policy = parse_policy({"edgemesh.io/lb-policy": "consistent-hash",
                           "edgemesh.io/hash-key": "header:x-user"}, "None", 60)
    nodes: Counter[str] = Counter()
    for key in range(2000):
        head = RequestHead(b"GET", b"/", b"web", ((b"x-user", b"%d" % key),), 0, "")
        host, _ = deliver(catalog, "e4", head, policy, {})
        nodes[host.split(".")[2]] += 1
    assert 0.2 < nodes["0"] / 2000 < 0.3  # e0: 1 pod of 4


# -- weighted balancing ----------------------------------------------------------------------


def mixed() -> tuple[Catalog, Service]:
    catalog = hash_world([1, 4, 0, 0, 0, 0])
    view = trimmed(catalog, "e0")
    return view, view.services["shop/web"]


def test_round_robin_and_random_weigh_an_aggregate_by_its_pods() -> None:
    view, service = mixed()
    for notes in ({}, {"edgemesh.io/lb-policy": "random"}):
        policy = parse_policy(notes, "None", 60)
        balancer = Balancer()
        chosen = [balancer.select(view, "e0", service, HTTP, None, policy, frozenset())
                  for _ in range(1000)]
        picks = Counter(e.node for e in chosen if e is not None)
        assert 0.7 < picks["e1"] / 1000 < 0.9, (notes, picks)


def test_least_request_compares_requests_per_pod() -> None:
    view, service = mixed()
    (own,) = [e for e in service.endpoints["http"] if not e.pods]
    (aggregate,) = [e for e in service.endpoints["http"] if e.pods]
    policy = parse_policy({"edgemesh.io/lb-policy": "least-request"}, "None", 60)
    balancer = Balancer()
    # Drawn by pods (4 of 5 draws land on the aggregate), compared per pod: 3 in progress
    # over 4 pods is less busy than 1 on one pod, so the own pod wins only when both
    # draws are it (1/25); 9 over 4 is busier, so it wins whenever drawn (9/25).
    for load, low, high in ((3, 0.0, 0.1), (9, 0.25, 0.5)):
        balancer.loads = {(aggregate.host, aggregate.port): load, (own.host, own.port): 1}
        picks = Counter(balancer.select(view, "e0", service, HTTP, None, policy, frozenset())
                        for _ in range(1000))
        assert low < picks[own] / 1000 < high, (load, picks)


# -- the wire --------------------------------------------------------------------------------


@_settings
@given(worlds())
def test_trimmed_views_and_their_deltas_cross_the_wire(world: Any) -> None:
    catalog, _, me = world
    view = trimmed(catalog, me)
    assert catalog_from_wire(catalog_to_wire(view)) == view
    empty = Catalog([], view.nodes, 0)
    delta = diff_catalogs(empty, view)
    assert apply_delta(empty, delta_from_wire(delta_to_wire(delta))) == view
    # The endpoint records hold exact endpoints only: an older reader sees no tag.
    for record in catalog_to_wire(view)["services"]:  # type: ignore[attr-defined]
        assert all(not e[0].startswith("*") for es in record[4].values() for e in es)


def test_headless_services_and_cloud_endpoints_stay_exact() -> None:
    catalog = hash_world([2, 2, 0, 0, 0, 2])
    service = catalog.services["shop/web"]
    folded = trim_service(service, "e0", catalog.is_edge)
    assert sorted(e.pods for e in folded.endpoints["http"]) == [0, 0, 0, 0, 2]
    headless = Service("shop", "h", None, (HTTP,), service.endpoints)
    assert trim_service(headless, "e0", catalog.is_edge) is headless


# -- the pusher ------------------------------------------------------------------------------


def trimmed_catalogs(whole: Catalog) -> Catalog:
    """The scope tests' catalogs with ClusterIPs (headless Services are not trimmed)."""
    return Catalog([Service(s.namespace, s.name, f"10.96.0.{i + 1}", s.ports, s.endpoints,
                            s.annotations) for i, s in enumerate(whole.services.values())],
                   whole.nodes, whole.revision)


scopes = st.sampled_from([ALL, Scope.parse("local"), Scope.parse("shop iot")])
edit_batches = st.lists(st.lists(st.tuples(
    st.integers(0, 7),
    st.one_of(st.none(), st.tuples(st.sampled_from(("shop", "iot", "video")),
                                   st.integers(0, 15), st.booleans())),
    st.one_of(st.none(), st.tuples(st.sampled_from(("edge-1", "edge-2", "cloud-1")),
                                   st.integers(0, 9))),
), min_size=1, max_size=4), min_size=1, max_size=6)


@settings(max_examples=150, deadline=None)
@given(catalogs, edit_batches, scopes, st.sampled_from(("edge-1", "edge-2", "edge-3")))
def test_what_a_trimmed_edge_holds_is_always_its_trimmed_view(
        start: Catalog, batches: list[Any], scope: Scope, node: str) -> None:
    current = {"catalog": trimmed_catalogs(start).with_revision(1)}
    pusher = CatalogPusher(Clock(), lambda: current["catalog"], 0.0, lambda n, c: scope)
    link = CountingLink()
    state = EdgeState(node, 0.0, link, trim=True)  # type: ignore[arg-type]
    pusher.snapshot(state)
    held = catalog_from_wire(link.pushes()[0].payload).with_revision(1)
    for revision, batch in enumerate(batches, start=2):
        seen = len(link.frames)
        current["catalog"] = trimmed_catalogs(apply_edits(current["catalog"], revision, batch))
        pusher.changed([state])
        for push in link.pushes()[seen:]:
            if push.kind == "snapshot":
                held = catalog_from_wire(push.payload).with_revision(push.revision)
            else:
                delta = delta_from_wire(push.payload)
                assert not delta.empty  # no empty revision bumps
                held = apply_delta(held, delta)
        expected = scope_view(current["catalog"], node, scope, trim=True)
        assert dict(held.services) == dict(expected.services)
        assert set(held.nodes) == set(expected.nodes)


def test_a_pod_replaced_on_another_node_sends_a_trimmed_edge_nothing() -> None:
    catalog = hash_world([1, 3, 0, 0, 0, 0])
    current = {"catalog": catalog}
    pusher = CatalogPusher(Clock(), lambda: current["catalog"], 0.0, lambda n, c: ALL)
    trim_link, full_link = CountingLink(), CountingLink()
    trim_state = EdgeState("e0", 0.0, trim_link, trim=True)  # type: ignore[arg-type]
    full_state = EdgeState("e2", 0.0, full_link)  # type: ignore[arg-type]
    for state in (trim_state, full_state):
        pusher.snapshot(state)
    # An older edge (no 'trimmed' in its hello) gets every address.
    assert {e.host for e in catalog_from_wire(full_link.pushes()[0].payload)
            .services["shop/web"].endpoints["http"]} == {
        e.host for e in catalog.services["shop/web"].endpoints["http"]}
    assert trim_link.bytes < full_link.bytes
    old = catalog.services["shop/web"]
    moved = tuple(Endpoint("10.9.9.9", e.port, e.node) if e.host == "10.1.1.1" else e
                  for e in old.endpoints["http"])
    current["catalog"] = Catalog([Service(old.namespace, old.name, old.cluster_ip, old.ports,
                                          {"http": moved}, traffic_distribution="PreferSameZone")],
                                 catalog.nodes, 2)
    before = (trim_link.bytes, full_link.bytes)
    pusher.changed([trim_state, full_state])
    assert trim_link.bytes == before[0]  # e1's aggregate is alike: nothing to e0
    assert full_link.bytes > before[1]


def test_a_trimmed_edge_that_moves_gets_a_rebase_of_its_trimmed_view() -> None:
    """Rebases (issue 13) compare digests of views: a trimmed edge holds a trimmed one."""
    catalog = hash_world([1, 3, 2, 0, 0, 0]).with_revision(40)
    pusher = CatalogPusher(Clock(), lambda: catalog, 0.0, lambda n, c: ALL)
    held = trimmed(catalog, "e0").with_revision(9)  # what it got from another replica
    link = CountingLink()
    state = EdgeState("e0", 0.0, link, trim=True)  # type: ignore[arg-type]
    assert pusher.first_push(state, (9, catalog_digest(held))) == "rebase"
    delta = delta_from_wire(link.pushes()[0].payload)
    assert (delta.base, delta.revision, delta.empty) == (9, 40, True)
    # Another node's trimmed view differs (its own pods exact): its own digest, its rebase.
    elsewhere = CountingLink()
    state = EdgeState("e1", 0.0, elsewhere, trim=True)  # type: ignore[arg-type]
    digest = catalog_digest(trimmed(catalog, "e1").with_revision(9))
    assert pusher.first_push(state, (9, digest)) == "rebase"
    # The whole catalog's digest is not what a trimmed edge holds: a snapshot.
    other = CountingLink()
    state = EdgeState("e0", 0.0, other, trim=True)  # type: ignore[arg-type]
    assert pusher.first_push(state, (9, catalog_digest(catalog.with_revision(9)))) == "snapshot"


def test_a_relayed_aggregate_is_resolved_by_the_router_on_that_node() -> None:
    catalog = hash_world([0, 3, 2, 0, 0, 0])
    view = trimmed(catalog, "e0")
    aggregate = next(e for e in view.services["shop/web"].endpoints["http"] if e.node == "e1")
    service = catalog.services["shop/web"]
    for _ in range(6):
        route = decide(catalog, Role.router, "router", SourceKind.tunnel, service, HTTP,
                       (aggregate.host, aggregate.port), Balancer(), None)
        assert route.target is TargetKind.tunnel and route.peer == "e1"
        assert route.endpoint is not None and route.endpoint.node == "e1"


# -- the gate: the router's option and the edge's hello ------------------------------------------


def hello_peer(reactor: Any, factory: Any, node: str, settings: dict[str, int]) -> Any:
    """An edge-like link to the router's tunnel, announcing ``settings`` in its hello."""
    from test_roles import Recorder
    from twisted.internet.address import IPv4Address
    from twisted.test.iosim import connect, makeFakeClient, makeFakeServer

    from edgemesh.transports import EnvelopeLink

    recorder = Recorder()
    peer = EnvelopeLink(reactor, recorder, node=node, role="edge", client=True)
    peer.hello_settings = settings
    theirs = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 7700))
    connect(theirs, makeFakeServer(theirs), peer, makeFakeClient(peer), greet=False,
            clock=reactor).flush()
    return recorder


def test_only_edges_that_announce_it_get_trimmed_views_and_only_if_the_router_trims() -> None:
    from test_roles import start
    from twisted.internet.testing import MemoryReactorClock

    from edgemesh.roles import RouterConfig, build_router
    from edgemesh.wire import TRIM_SETTING

    for trims in (True, False):
        reactor = MemoryReactorClock()
        router = build_router(reactor, RouterConfig(catalog=hash_world([1, 3, 0, 0, 0, 0]),
                                                    trim_endpoints=trims))
        start(router)
        (factory,) = [f for port, f, _, _ in reactor.tcpServers if port == 7700]
        old = hello_peer(reactor, factory, "e2", {})
        new = hello_peer(reactor, factory, "e3", {TRIM_SETTING: 1})
        assert (router.edges["e2"].trim, router.edges["e3"].trim) == (False, trims)
        for recorder, trimmed_view in ((old, False), (new, trims)):
            (push,) = [c for c in recorder.controls if getattr(c, "kind", None) == "snapshot"]
            held = catalog_from_wire(push.payload).services["shop/web"].endpoints["http"]
            assert len(held) == (2 if trimmed_view else 4)  # e0's pod + e1's aggregate
