"""Traffic topology (issue 14): internalTrafficPolicy, hints, conditions, trafficDistribution
and node pools, as pure functions of the catalog and the calling node; ClientIP affinity's
timeout.  Property tests over any mix of nodes, zones, pools and endpoint conditions."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from edgemesh.catalog import Catalog, Endpoint, Node, Service, ServicePort
from edgemesh.exchange import MeshError, Reason, RequestHead, Role, SourceKind, TargetKind
from edgemesh.routing import (
    Balancer,
    PolicyBook,
    RoundRobin,
    decide,
    hint_mode,
    parse_policy,
    topology_candidates,
    topology_tiers,
)

HTTP = ServicePort("http", 80, 8080)
NAMES = ["n0", "n1", "n2", "n3", "n4"]
ZONES = [None, "z1", "z2"]
POOLS = [None, "p1", "p2"]
DISTRIBUTIONS = [None, "PreferSameNode", "PreferSameZone", "PreferClose", "PreferSomethingNew"]
ZONE_FIRST = {"PreferSameZone", "PreferClose"}

_settings = settings(max_examples=300, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])

# -- strategies ------------------------------------------------------------------------------

_nodes = st.tuples(*[st.tuples(st.sampled_from(ZONES), st.sampled_from(POOLS)) for _ in NAMES]).map(
    lambda places: tuple(Node(name, True, f"10.0.0.{i + 1}", 7701, zone=zone, pool=pool)
                         for i, (name, (zone, pool)) in enumerate(zip(NAMES, places)))
)
_hint_zones = st.sampled_from([(), ("z1",), ("z2",), ("z1", "z2")])
_hint_nodes = st.sampled_from([(), ("n0",), ("n1",), ("n0", "n2")])
_conditions = st.sampled_from([
    (True, True, False),    # ready
    (False, True, True),    # serving while terminating
    (False, False, True),   # terminating, no longer serving
    (False, False, False),  # not ready
])


@st.composite
def _endpoint_specs(draw: st.DrawFn) -> list[tuple[object, ...]]:
    count = draw(st.integers(0, 8))
    return [
        (
            draw(st.sampled_from([*NAMES, None, "elsewhere"])),
            draw(_conditions),
            draw(st.sampled_from(ZONES)),
            draw(_hint_zones),
            draw(_hint_nodes),
        )
        for _ in range(count)
    ]


@st.composite
def worlds(draw: st.DrawFn, hints: bool = True) -> tuple[Catalog, Service, str]:
    """(catalog, its service, the calling node)."""
    nodes = draw(_nodes)
    by_name = {n.name: n for n in nodes}
    endpoints = []
    for i, (node, (ready, serving, terminating), own_zone, for_zones, for_nodes) in enumerate(
        draw(_endpoint_specs())
    ):
        assert node is None or isinstance(node, str)
        known = by_name.get(node) if node is not None else None
        # As assembly does: the slice's zone, else the node's.
        zone = own_zone if own_zone is not None else (known.zone if known else None)
        endpoints.append(Endpoint(
            f"10.1.0.{i + 1}", 8080, node, ready=ready, serving=serving,
            terminating=terminating, zone=zone,
            for_zones=for_zones if hints else (),  # type: ignore[arg-type]
            for_nodes=for_nodes if hints else (),  # type: ignore[arg-type]
        ))
    service = Service(
        "shop", "web", "10.96.0.10", (HTTP,), {"http": tuple(endpoints)},
        traffic_distribution=draw(st.sampled_from(DISTRIBUTIONS)),
        internal_traffic_policy=draw(st.sampled_from(["Cluster", "Cluster", "Local"])),
    )
    catalog = Catalog([service], nodes, revision=1)
    return catalog, catalog.services["shop/web"], draw(st.sampled_from(NAMES))


def flat(tiers: Sequence[Sequence[Endpoint]]) -> list[Endpoint]:
    return [e for tier in tiers for e in tier]


def rank(catalog: Catalog, service: Service, me: str, endpoint: Endpoint) -> int:
    """The documented order: node, pool, zone, rest (no node step when zone first)."""
    here = catalog.nodes[me]
    other = catalog.node(endpoint.node) if endpoint.node else None
    if endpoint.node == me and service.traffic_distribution not in ZONE_FIRST:
        return 0
    if here.pool is not None and other is not None and other.pool == here.pool:
        return 1
    if here.zone is not None and endpoint.zone == here.zone:
        return 2
    return 3


def head(client: str = "192.0.2.7") -> RequestHead:
    return RequestHead(b"GET", b"/", b"web.shop", (), 0, client)


# -- internalTrafficPolicy: Local --------------------------------------------------------------


@_settings
@given(worlds())
def test_local_never_chooses_an_endpoint_of_another_node(
        world: tuple[Catalog, Service, str]) -> None:
    catalog, service, me = world
    service = dataclasses.replace(service, internal_traffic_policy="Local")
    catalog = Catalog([service], catalog.nodes, revision=1)
    service = catalog.services["shop/web"]
    tiers = topology_tiers(catalog, me, service, HTTP)
    assert all(e.node == me for e in flat(tiers))
    mine = [e for e in service.endpoints["http"] if e.node == me]
    if any(e.ready for e in mine):
        assert {*flat(tiers)} == {e for e in mine if e.ready}
    else:
        assert {*flat(tiers)} == {e for e in mine if e.serving and e.terminating}
    balancer = Balancer()
    for attempt in range(4):
        try:
            route = decide(catalog, Role.edge, me, SourceKind.service_bus, service, HTTP, None,
                           balancer, head(f"192.0.2.{attempt}"), book_policy(service))
        except MeshError as error:
            assert error.reason is Reason.no_endpoint and error.status == 503
            assert "internalTrafficPolicy: Local" in error.detail
            assert not tiers
        else:
            assert route.target is TargetKind.service_bus and route.peer is None
            assert route.endpoint is not None and route.endpoint.node == me


def book_policy(service: Service) -> object:
    book = PolicyBook()
    book.scan(Catalog([service]))
    return book.get(service)


def test_local_with_endpoints_only_elsewhere_is_503_no_endpoint() -> None:
    nodes = [Node("n0", True, "10.0.0.1", 7701, zone="z1", pool="p1"),
             Node("n1", True, "10.0.0.2", 7701, zone="z1", pool="p1")]
    service = Service("shop", "web", "10.96.0.10", (HTTP,), {"http": (
        Endpoint("10.1.0.1", 8080, "n1", zone="z1"),
        Endpoint("10.1.0.2", 8080, "n0", ready=False, serving=False, terminating=True),
    )}, internal_traffic_policy="Local")
    catalog = Catalog([service], nodes)
    for balancer in (Balancer(), RoundRobin()):
        with pytest.raises(MeshError) as caught:
            decide(catalog, Role.edge, "n0", SourceKind.service_bus, catalog.services["shop/web"],
                   HTTP, None, balancer)
        assert caught.value.reason is Reason.no_endpoint
        assert "on node n0 (internalTrafficPolicy: Local)" in caught.value.detail


# -- conditions: ready first, serving-and-terminating only when none is ready ------------------


@_settings
@given(worlds())
def test_terminating_endpoints_only_when_no_ready_one_is_left(
    world: tuple[Catalog, Service, str],
) -> None:
    catalog, service, me = world
    chosen = flat(topology_tiers(catalog, me, service, HTTP))
    allowed = service.endpoints["http"]
    if service.internal_traffic_policy == "Local":
        allowed = tuple(e for e in allowed if e.node == me)
    assert all(e.ready or (e.serving and e.terminating) for e in chosen)
    if any(e.ready for e in allowed):
        assert all(e.ready for e in chosen) and chosen
    else:
        assert set(chosen) == {e for e in allowed if e.serving and e.terminating}


# -- the preference order ----------------------------------------------------------------------


@_settings
@given(worlds())
def test_tiers_follow_the_preference_order(world: tuple[Catalog, Service, str]) -> None:
    catalog, service, me = world
    tiers = topology_tiers(catalog, me, service, HTTP)
    candidates = topology_candidates(catalog, me, service, HTTP)
    # Nothing lost, nothing added, no empty tier.
    assert sorted(flat(tiers), key=str) == sorted(candidates, key=str)
    assert all(tiers)
    if service.internal_traffic_policy == "Local":
        assert len(tiers) <= 1
        return
    ranks = [{rank(catalog, service, me, e) for e in tier} for tier in tiers]
    assert all(len(r) == 1 for r in ranks), ranks
    order = [r.pop() for r in ranks]
    assert order == sorted(set(order)), order
    # Whatever the mix, the balancer's pick is in the first (closest non-empty) tier.
    balancer = Balancer()
    for _ in range(3):
        found = balancer.select(catalog, me, service, HTTP, head(), book_policy(service), ())
        assert (found is None) == (not tiers)
        if tiers:
            assert found in tiers[0]


@_settings
@given(worlds(hints=False), st.data())
def test_an_excluded_or_unhealthy_tier_falls_to_the_next(
    world: tuple[Catalog, Service, str], data: st.DataObject,
) -> None:
    catalog, service, me = world
    tiers = topology_tiers(catalog, me, service, HTTP)
    if not tiers:
        return
    excluded = {(e.host, e.port) for e in tiers[0]}
    found = Balancer().select(catalog, me, service, HTTP, head(), book_policy(service), excluded)
    if len(tiers) == 1:
        assert found is None
    else:
        assert found in tiers[1]


def test_default_is_local_first_then_pool_then_zone() -> None:
    """No field set: the mesh's old behaviour (this node first), with pools in between."""
    nodes = [Node("n0", True, "10.0.0.1", 7701, zone="z1", pool="p1"),
             Node("n1", True, "10.0.0.2", 7701, zone="z2", pool="p1"),
             Node("n2", True, "10.0.0.3", 7701, zone="z1", pool="p2"),
             Node("n3", True, "10.0.0.4", 7701, zone="z3")]
    here, pool, zone, far = (Endpoint(f"10.1.0.{i}", 8080, f"n{i}", zone=z)
                             for i, z in enumerate(["z1", "z2", "z1", "z3"]))
    for distribution in (None, "PreferSameNode"):
        service = Service("shop", "web", None, (HTTP,), {"http": (far, zone, pool, here)},
                          traffic_distribution=distribution)
        catalog = Catalog([service], nodes)
        assert topology_tiers(catalog, "n0", catalog.services["shop/web"], HTTP) == (
            (here,), (pool,), (zone,), (far,))
    for distribution in ("PreferSameZone", "PreferClose"):
        service = Service("shop", "web", None, (HTTP,), {"http": (far, zone, pool, here)},
                          traffic_distribution=distribution)
        catalog = Catalog([service], nodes)
        # The pool (this node in it) shares the load; then the zone; then the rest.
        assert topology_tiers(catalog, "n0", catalog.services["shop/web"], HTTP) == (
            (pool, here), (zone,), (far,))


# -- hints, as kube-proxy reads them -----------------------------------------------------------


@_settings
@given(worlds())
def test_hints_are_used_only_when_kube_proxy_would(world: tuple[Catalog, Service, str]) -> None:
    catalog, service, me = world
    if service.internal_traffic_policy == "Local":
        return
    ready = [e for e in service.endpoints["http"] if e.ready]
    zone = catalog.nodes[me].zone
    candidates = set(topology_candidates(catalog, me, service, HTTP))
    mode = hint_mode(service.endpoints["http"], me, zone)
    if not ready:
        assert mode is None
        return
    all_node_hints = all(e.for_nodes for e in ready)
    all_zone_hints = all(e.for_zones for e in ready)
    if all_node_hints and any(me in e.for_nodes for e in ready):
        assert mode == "node"
        assert candidates == {e for e in ready if me in e.for_nodes}
    elif all_zone_hints and zone is not None and any(zone in e.for_zones for e in ready):
        assert mode == "zone"
        assert candidates == {e for e in ready if zone in e.for_zones}
    else:
        # An endpoint without hints, or none hinted for here: hints are ignored.
        assert mode is None
        assert candidates == set(ready)


def test_one_endpoint_without_hints_turns_hints_off() -> None:
    nodes = [Node("n0", True, "10.0.0.1", 7701, zone="z1"),
             Node("n1", True, "10.0.0.2", 7701, zone="z2")]
    a = Endpoint("10.1.0.1", 8080, "n1", zone="z2", for_zones=("z1",))
    b = Endpoint("10.1.0.2", 8080, "n1", zone="z2", for_zones=("z2",))
    c = Endpoint("10.1.0.3", 8080, "n1", zone="z2")
    catalog = Catalog([Service("shop", "web", None, (HTTP,), {"http": (a, b)})], nodes)
    assert topology_candidates(catalog, "n0", catalog.services["shop/web"], HTTP) == (a,)
    catalog = Catalog([Service("shop", "web", None, (HTTP,), {"http": (a, b, c)})], nodes)
    assert topology_candidates(catalog, "n0", catalog.services["shop/web"], HTTP) == (a, b, c)


# -- deliveries from another node, and the router ----------------------------------------------


def test_a_node_delivers_to_the_terminating_endpoint_another_node_chose() -> None:
    nodes = [Node("n0", True, "10.0.0.1", 7701), Node("n1", True, "10.0.0.2", 7701)]
    draining = Endpoint("10.1.0.1", 8080, "n1", ready=False, serving=True, terminating=True)
    gone = Endpoint("10.1.0.2", 8080, "n1", ready=False, serving=False, terminating=True)
    service = Service("shop", "web", "10.96.0.10", (HTTP,), {"http": (draining, gone)})
    catalog = Catalog([service], nodes)
    service = catalog.services["shop/web"]
    # n0 has no ready endpoint anywhere: it chooses the one still serving, on n1.
    route = decide(catalog, Role.edge, "n0", SourceKind.service_bus, service, HTTP, None,
                   Balancer())
    assert route.target is TargetKind.hub and route.endpoint == draining
    # n1 honours that choice; an endpoint no longer serving it does not.
    for source in (SourceKind.hub, SourceKind.tunnel):
        route = decide(catalog, Role.edge, "n1", source, service, HTTP, ("10.1.0.1", 8080),
                       Balancer())
        assert route.endpoint == draining
        route = decide(catalog, Role.edge, "n1", source, service, HTTP, ("10.1.0.2", 8080),
                       Balancer())
        assert route.endpoint == draining  # chosen locally instead
    # The router relays it too.
    route = decide(catalog, Role.router, "router-0", SourceKind.tunnel, service, HTTP,
                   ("10.1.0.1", 8080), Balancer())
    assert route.target is TargetKind.tunnel and route.peer == "n1"


# -- ClientIP affinity and its timeout ----------------------------------------------------------


def _affinity_world(timeout: int, extra: int = 0) -> tuple[Catalog, Service]:
    nodes = [Node("n0", True, "10.0.0.1", 7701), Node("n1", True, "10.0.0.2", 7701)]
    eps = tuple(Endpoint(f"10.1.0.{i}", 8080, "n1") for i in range(1, 4 + extra))
    service = Service("shop", "web", "10.96.0.10", (HTTP,), {"http": eps},
                      session_affinity="ClientIP", affinity_timeout=timeout)
    catalog = Catalog([service], nodes)
    return catalog, catalog.services["shop/web"]


def test_client_ip_affinity_holds_for_its_timeout_then_lets_go() -> None:
    clock = Clock()
    balancer = Balancer(now=clock.seconds)
    small, svc3 = _affinity_world(60)
    big, svc4 = _affinity_world(60, extra=1)
    policy = parse_policy({}, "ClientIP", 60)
    assert policy.affinity == 60.0
    newcomer = svc4.endpoints["http"][-1]
    # A client whose hash moves to the new endpoint once it exists.
    client = next(
        c for c in (f"192.0.2.{i}" for i in range(1, 255))
        if Balancer().select(big, "n0", svc4, HTTP, head(c), policy, ()) == newcomer
    )
    first = balancer.select(small, "n0", svc3, HTTP, head(client), policy, ())
    assert first is not None and first != newcomer
    balancer.forget()  # a new catalog: the memory survives it
    clock.advance(59)
    again = balancer.select(big, "n0", svc4, HTTP, head(client), policy, ())
    assert again is not None and (again.host, again.port) == (first.host, first.port)
    clock.advance(59)  # 59 s after the last exchange: still there
    again = balancer.select(big, "n0", svc4, HTTP, head(client), policy, ())
    assert again is not None and (again.host, again.port) == (first.host, first.port)
    clock.advance(60)  # the timeout after the last exchange: chosen afresh (the hash)
    assert balancer.select(big, "n0", svc4, HTTP, head(client), policy, ()) == newcomer


def test_affinity_gives_way_to_exclusion_and_to_a_closer_tier() -> None:
    clock = Clock()
    balancer = Balancer(now=clock.seconds)
    catalog, service = _affinity_world(3600)
    policy = parse_policy({}, "ClientIP", 3600)
    first = balancer.select(catalog, "n0", service, HTTP, head(), policy, ())
    assert first is not None
    retry = balancer.select(catalog, "n0", service, HTTP, head(), policy,
                            {(first.host, first.port)})
    assert retry is not None and retry != first
    # The retry's endpoint is remembered now.
    assert balancer.select(catalog, "n0", service, HTTP, head(), policy, ()) == retry
    # An endpoint on the client's own node appears: the closer tier wins over the memory.
    local = Endpoint("10.1.0.9", 8080, "n0")
    closer = Catalog([dataclasses.replace(
        service, endpoints={"http": (*service.endpoints["http"], local)})], catalog.nodes)
    assert balancer.select(closer, "n0", closer.services["shop/web"], HTTP, head(), policy,
                           ()) == local


def test_affinity_memory_is_bounded() -> None:
    balancer = Balancer(max_affinity=8)
    catalog, service = _affinity_world(3600)
    policy = parse_policy({}, "ClientIP", 3600)
    for i in range(100):
        balancer.select(catalog, "n0", service, HTTP, head(f"198.51.100.{i}"), policy, ())
    assert len(balancer._affinity) == 8


def test_an_explicit_consistent_hash_overrides_the_affinity_memory() -> None:
    policy = parse_policy({"edgemesh.io/lb-policy": "consistent-hash"}, "ClientIP", 60)
    assert policy.affinity is None and policy.bounded_load


def test_an_unknown_distribution_is_a_reported_problem_not_an_error() -> None:
    service = Service("shop", "web", None, (HTTP,), {}, traffic_distribution="PreferSameRack")
    book = PolicyBook()
    book.scan(Catalog([service]))
    [problem] = book.problems()["shop/web"]
    assert "spec.trafficDistribution: unknown value 'PreferSameRack'" in problem
