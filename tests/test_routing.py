"""
The routing decision (decide, RoundRobin) and the Pipeline: registry, rules, dispatch.
Plain Python: a Catalog built by hand, fake targets.
"""

# Identity asserts between an interface-typed value and a fake narrow too eagerly for mypy.
# mypy: disable-error-code="unreachable"

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from zope.interface import implementer
from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyObject

from edgemesh.catalog._catalog import Catalog
from edgemesh.catalog._model import Endpoint, Node, Service, ServicePort
from edgemesh.catalog._trim import aggregate_of
from edgemesh.exchange import (
    IRequestBody,
    IResponder,
    ISource,
    ITarget,
    MeshError,
    Reason,
    RequestHead,
    Role,
    SourceKind,
    TargetKind,
)
from edgemesh.routing import (
    EDGE_RULES,
    ROUTER_PEER,
    ROUTER_RULES,
    GuardedExchange,
    Pipeline,
    RoundRobin,
    Route,
    decide,
    rules_table,
)
from edgemesh.routing._guard import GuardedBody
from edgemesh.testing import RecordingBody, ScriptedTarget

HTTP = ServicePort("http", 80, 8080)
ADMIN = ServicePort("admin", 9000, 9000)

NODES = (
    Node("edge-1", True, "192.0.2.1", 7701),
    Node("edge-2", True, "192.0.2.2", 7701),
    Node("edge-3", True, None, 7701),  # an edge with no hub address
    Node("cloud-1", False, "10.0.0.5", 7701),
)

LOCAL_A = Endpoint("10.1.0.1", 8080, "edge-1")
LOCAL_B = Endpoint("10.1.0.2", 8080, "edge-1")
LOCAL_DOWN = Endpoint("10.1.0.9", 8080, "edge-1", ready=False)
EDGE_2 = Endpoint("10.2.0.1", 8080, "edge-2")
EDGE_2B = Endpoint("10.2.0.2", 8080, "edge-2")
EDGE_3 = Endpoint("10.3.0.1", 8080, "edge-3")
CLOUD = Endpoint("10.9.0.1", 8080, "cloud-1")
CLOUD_B = Endpoint("10.9.0.2", 8080, "cloud-1")
NOWHERE = Endpoint("10.8.0.1", 8080, None)
STRANGER = Endpoint("10.7.0.1", 8080, "not-in-catalog")


def make_catalog() -> Catalog:
    services = []
    for index, (name, endpoints, headless) in enumerate([
        ("web", (LOCAL_A, LOCAL_B, LOCAL_DOWN, EDGE_2, CLOUD), False),
        ("remote", (EDGE_2, LOCAL_DOWN), False),
        ("remote2", (EDGE_2, EDGE_2B), False),
        ("mixed", (EDGE_2, CLOUD), False),
        ("cloud", (CLOUD, CLOUD_B), False),
        ("headless", (CLOUD,), True),
        ("nohub", (EDGE_3,), False),
        ("nowhere", (NOWHERE,), False),
        ("stranger", (STRANGER,), False),
        ("down", (LOCAL_DOWN,), False),
        ("down-headless", (LOCAL_DOWN,), True),
        ("empty", (), False),
    ]):
        cluster_ip = None if headless else f"10.96.0.{index + 10}"
        services.append(Service("shop", name, cluster_ip, (HTTP, ADMIN),
                                {"http": endpoints, "admin": (CLOUD,)}))
    return Catalog(services, NODES, revision=1)


CATALOG = make_catalog()


def svc(name: str) -> Service:
    found = CATALOG.service(f"shop/{name}")
    assert found is not None
    return found


def edge(name: str, source: SourceKind = SourceKind.service_bus,
         hint: tuple[str, int] | None = None, balancer: RoundRobin | None = None) -> Route:
    return decide(CATALOG, Role.edge, "edge-1", source, svc(name), HTTP, hint,
                  balancer or RoundRobin())


def router(name: str, source: SourceKind = SourceKind.router,
           hint: tuple[str, int] | None = None, balancer: RoundRobin | None = None) -> Route:
    return decide(CATALOG, Role.router, "router-0", source, svc(name), HTTP, hint,
                  balancer or RoundRobin())


def no_endpoint(call: Any) -> MeshError:
    with pytest.raises(MeshError) as caught:
        call()
    assert caught.value.reason is Reason.no_endpoint and caught.value.status == 503
    return caught.value


# --- decide: edge ------------------------------------------------------------------------


def test_edge_prefers_local_endpoints_round_robin() -> None:
    balancer = RoundRobin()
    routes = [edge("web", balancer=balancer) for _ in range(4)]
    assert {r.target for r in routes} == {TargetKind.service_bus}
    assert [r.endpoint for r in routes] == [LOCAL_A, LOCAL_B, LOCAL_A, LOCAL_B]
    assert all(r.service is svc("web") and r.port is HTTP and r.peer is None for r in routes)


def test_edge_never_picks_a_not_ready_endpoint() -> None:
    balancer = RoundRobin()
    for _ in range(5):
        route = edge("remote", balancer=balancer)
        assert route.endpoint == EDGE_2
    no_endpoint(lambda: edge("down"))


def test_edge_endpoint_on_another_edge_goes_to_its_hub() -> None:
    route = edge("remote")
    assert route == Route(TargetKind.hub, svc("remote"), HTTP, EDGE_2, "edge-2")


def test_edge_round_robin_across_remote_endpoints() -> None:
    balancer = RoundRobin()
    routes = [edge("mixed", balancer=balancer) for _ in range(4)]
    assert [(r.target, r.peer) for r in routes] == [
        (TargetKind.hub, "edge-2"), (TargetKind.tunnel, ROUTER_PEER)
    ] * 2
    assert [r.endpoint for r in routes[:2]] == [EDGE_2, CLOUD]
    remote2 = [edge("remote2", balancer=balancer).endpoint for _ in range(4)]
    assert remote2 == [EDGE_2, EDGE_2B, EDGE_2, EDGE_2B]


def test_edge_cloud_endpoint_goes_through_the_tunnel_to_the_router() -> None:
    route = edge("cloud")
    assert route.target is TargetKind.tunnel and route.peer == ROUTER_PEER == "router"
    assert route.endpoint in (CLOUD, CLOUD_B)


@pytest.mark.parametrize("name", ["nowhere", "stranger"])
def test_edge_endpoint_on_an_unknown_node_goes_to_the_router(name: str) -> None:
    route = edge(name)
    assert route.target is TargetKind.tunnel and route.peer == ROUTER_PEER


def test_edge_without_a_hub_address_is_unreachable_directly() -> None:
    error = no_endpoint(lambda: edge("nohub"))
    assert "edge-3" in error.detail


@pytest.mark.parametrize("name", ["down", "empty"])
def test_edge_no_endpoint_is_503(name: str) -> None:
    error = no_endpoint(lambda: edge(name))
    assert f"shop/{name}" in error.detail


@pytest.mark.parametrize("source", [SourceKind.hub, SourceKind.tunnel])
def test_edge_inbound_honours_the_hint(source: SourceKind) -> None:
    balancer = RoundRobin()
    for _ in range(3):
        route = edge("web", source, hint=("10.1.0.2", 8080), balancer=balancer)
        assert route == Route(TargetKind.service_bus, svc("web"), HTTP, LOCAL_B)


@pytest.mark.parametrize("hint", [None, ("10.1.0.2", 9999), ("10.2.0.1", 8080), ("10.1.0.9", 8080)])
def test_edge_inbound_without_a_usable_hint_picks_a_local_endpoint(
    hint: tuple[str, int] | None,
) -> None:
    balancer = RoundRobin()
    routes = [edge("web", SourceKind.hub, hint, balancer) for _ in range(4)]
    assert {r.target for r in routes} == {TargetKind.service_bus}
    assert [r.endpoint for r in routes] == [LOCAL_A, LOCAL_B, LOCAL_A, LOCAL_B]


@pytest.mark.parametrize("source", [SourceKind.hub, SourceKind.tunnel])
@pytest.mark.parametrize("name", ["remote", "cloud", "down"])
def test_edge_inbound_never_relays(source: SourceKind, name: str) -> None:
    """Another node chose this one: no local endpoint is a 503 here, never a second hop."""
    error = no_endpoint(lambda: edge(name, source, hint=("10.2.0.1", 8080)))
    assert "edge-1" in error.detail


def test_edge_ignores_hints_from_local_apps() -> None:
    balancer = RoundRobin()
    routes = [edge("web", SourceKind.service_bus, ("10.1.0.2", 8080), balancer) for _ in range(2)]
    assert [r.endpoint for r in routes] == [LOCAL_A, LOCAL_B]


def test_edge_inbound_with_an_aggregate_hint_picks_among_local_pods_of_that_kind() -> None:
    """A trimmed sender's hint may name a kind of pod on this node (an aggregate's tag), not
    an endpoint: that kind's pods take turns; a tag of no kind here: any local pod."""
    zoned = Endpoint("10.1.0.3", 8080, "edge-1", zone="z2")
    service = Service("shop", "kinds", "10.96.2.1", (HTTP,), {"http": (LOCAL_A, LOCAL_B, zoned)})
    catalog = Catalog([service], NODES)
    balancer = RoundRobin()

    def chosen(tag: str) -> Endpoint | None:
        return decide(catalog, Role.edge, "edge-1", SourceKind.hub, service, HTTP, (tag, 8080),
                      balancer).endpoint

    assert [chosen(aggregate_of(LOCAL_A)) for _ in range(4)] == [LOCAL_A, LOCAL_B] * 2
    assert [chosen(aggregate_of(zoned)) for _ in range(2)] == [zoned, zoned]
    assert {chosen("*no-such-kind") for _ in range(3)} == {LOCAL_A, LOCAL_B, zoned}


# --- decide: router ----------------------------------------------------------------------


def test_router_edge_endpoint_goes_down_the_tunnel_to_that_edge() -> None:
    route = router("remote")
    assert route == Route(TargetKind.tunnel, svc("remote"), HTTP, EDGE_2, "edge-2")


def test_router_cloud_endpoint_goes_through_the_cluster_ip() -> None:
    route = router("cloud")
    assert route == Route(TargetKind.cluster_ip, svc("cloud"), HTTP, None)


def test_router_headless_cloud_service_goes_to_the_endpoint() -> None:
    route = router("headless")
    assert route == Route(TargetKind.cluster_ip, svc("headless"), HTTP, CLOUD)


def test_router_round_robin_between_edge_and_cloud() -> None:
    balancer = RoundRobin()
    routes = [router("mixed", balancer=balancer) for _ in range(4)]
    assert [(r.target, r.peer) for r in routes] == [
        (TargetKind.tunnel, "edge-2"), (TargetKind.cluster_ip, None)
    ] * 2


def test_router_honours_an_edges_hint() -> None:
    balancer = RoundRobin()
    for _ in range(3):
        route = router("mixed", SourceKind.tunnel, ("10.9.0.1", 8080), balancer)
        assert route.target is TargetKind.cluster_ip
    for _ in range(3):
        route = router("remote2", SourceKind.tunnel, ("10.2.0.2", 8080), balancer)
        assert route == Route(TargetKind.tunnel, svc("remote2"), HTTP, EDGE_2B, "edge-2")


def test_router_ignores_hints_from_cloud_apps_and_unknown_hints() -> None:
    balancer = RoundRobin()
    picks = [router("remote2", SourceKind.router, ("10.2.0.2", 8080), balancer).endpoint
             for _ in range(2)]
    assert picks == [EDGE_2, EDGE_2B]
    picks = [router("remote2", SourceKind.tunnel, ("10.2.0.99", 8080), balancer).endpoint
             for _ in range(2)]
    assert picks == [EDGE_2, EDGE_2B]


def test_router_no_ready_endpoint_from_an_edge_falls_back_to_the_cluster_ip() -> None:
    route = router("down", SourceKind.tunnel)
    assert route == Route(TargetKind.cluster_ip, svc("down"), HTTP, None)


@pytest.mark.parametrize(("name", "source"), [
    ("down", SourceKind.router), ("empty", SourceKind.router),
    ("down-headless", SourceKind.tunnel), ("down-headless", SourceKind.router),
])
def test_router_no_endpoint_is_503(name: str, source: SourceKind) -> None:
    no_endpoint(lambda: router(name, source))


# --- RoundRobin --------------------------------------------------------------------------


def test_round_robin_counts_per_service_port() -> None:
    balancer = RoundRobin()
    web, cloud = svc("web"), svc("cloud")
    endpoints = (LOCAL_A, LOCAL_B, CLOUD)
    picks = [balancer.pick(web, HTTP, endpoints), balancer.pick(web, ADMIN, endpoints),
             balancer.pick(cloud, HTTP, endpoints), balancer.pick(web, HTTP, endpoints)]
    assert picks == [LOCAL_A, LOCAL_A, LOCAL_A, LOCAL_B]
    assert Counter(balancer.pick(web, HTTP, endpoints) for _ in range(300)) == {
        LOCAL_A: 100, LOCAL_B: 100, CLOUD: 100
    }


def test_round_robin_state_is_bounded() -> None:
    balancer = RoundRobin(max_keys=8)
    endpoints = (LOCAL_A,)
    for i in range(100):
        balancer.pick(Service("ns", f"s{i}", None, (HTTP,)), HTTP, endpoints)
        assert len(balancer._next) <= 8


# --- Pipeline ----------------------------------------------------------------------------


@implementer(ISource)
class FakeSource:
    def __init__(self, kind: SourceKind, description: str) -> None:
        self.kind = kind
        self.description = description


RESPONDER: Any = object()


def head(authority: bytes) -> RequestHead:
    return RequestHead(b"GET", b"/", authority, (), 0, client="10.0.0.7")


def edge_pipeline(rules: Any = None) -> tuple[Pipeline, dict[TargetKind, ScriptedTarget]]:
    pipeline = Pipeline(Role.edge, "edge-1", CATALOG, rules)
    targets = {kind: ScriptedTarget(kind) for kind in (TargetKind.service_bus, TargetKind.hub,
                                                    TargetKind.tunnel)}
    for target in targets.values():
        pipeline.add_target(target)
    return pipeline, targets


def router_pipeline() -> tuple[Pipeline, dict[TargetKind, ScriptedTarget]]:
    pipeline = Pipeline(Role.router, "router-0", CATALOG)
    targets = {kind: ScriptedTarget(kind) for kind in (TargetKind.tunnel, TargetKind.cluster_ip)}
    for target in targets.values():
        pipeline.add_target(target)
    return pipeline, targets


def test_fakes_provide_their_interfaces() -> None:
    assert verifyObject(ITarget, ScriptedTarget(TargetKind.hub))
    assert verifyObject(ISource, FakeSource(SourceKind.hub, "tcp:7701"))


def test_add_target_verifies_the_interface() -> None:
    pipeline = Pipeline(Role.edge, "edge-1", CATALOG)

    class NotATarget:
        kind = TargetKind.hub

        def open(self, route: Route, head: RequestHead, responder: IResponder) -> None:
            pass

    @implementer(ITarget)
    class NoKind:  # type: ignore[misc]  # deliberately broken
        def open(self, route: Route, head: RequestHead, responder: IResponder) -> IRequestBody:
            return RecordingBody()

    @implementer(ITarget)
    class WrongOpen:
        kind = TargetKind.hub

        def open(self) -> None:  # type: ignore[override]  # deliberately broken
            pass

    for bad in (NotATarget(), NoKind(), WrongOpen(), object()):
        with pytest.raises(Invalid):
            pipeline.add_target(bad)  # type: ignore[arg-type]
    assert pipeline.targets == {}


def test_add_source_verifies_the_interface() -> None:
    pipeline = Pipeline(Role.edge, "edge-1", CATALOG)

    @implementer(ISource)
    class NoDescription:  # type: ignore[misc]  # deliberately broken
        kind = SourceKind.hub

    with pytest.raises(Invalid):
        pipeline.add_source(NoDescription())
    pipeline.add_source(FakeSource(SourceKind.service_bus, "tcp:15001"))
    assert len(pipeline.sources) == 1


def test_describe() -> None:
    pipeline, _ = edge_pipeline()
    pipeline.add_source(FakeSource(SourceKind.service_bus, "tcp:15001"))
    assert pipeline.describe() == {
        "role": "edge",
        "node": "edge-1",
        "sources": [{"kind": "service-bus", "at": "tcp:15001"}],
        "targets": ["hub", "service-bus", "tunnel"],
        "rules": {
            "service-bus": ["hub", "service-bus", "tunnel"],
            "hub": ["service-bus"],
            "tunnel": ["service-bus"],
        },
    }


def test_default_rules() -> None:
    assert Pipeline(Role.edge, "e", CATALOG).rules == EDGE_RULES
    assert Pipeline(Role.router, "r", CATALOG).rules == ROUTER_RULES
    pipeline = Pipeline(Role.edge, "e", CATALOG)
    pipeline.rules[SourceKind.hub] = frozenset(TargetKind)
    assert EDGE_RULES[SourceKind.hub] == frozenset({TargetKind.service_bus})  # a copy was changed


def test_rules_table() -> None:
    assert rules_table(ROUTER_RULES) == [
        ("router", "cluster-ip"), ("router", "tunnel"), ("tunnel", "cluster-ip"),
        ("tunnel", "tunnel")
    ]


@pytest.mark.parametrize(("authority", "kind", "endpoint"), [
    (b"web.shop", TargetKind.service_bus, LOCAL_A),
    (b"remote.shop.svc.cluster.local:80", TargetKind.hub, EDGE_2),
    (b"cloud.shop.svc", TargetKind.tunnel, CLOUD),
])
def test_dispatch_routes_to_the_target(authority: bytes, kind: TargetKind,
                                       endpoint: Endpoint) -> None:
    pipeline, targets = edge_pipeline()
    body = pipeline.dispatch(SourceKind.service_bus, head(authority), RESPONDER)
    # The pipeline's guard stands between the source and the target, both ways.
    assert isinstance(body, GuardedBody) and body.guard.inner is targets[kind].opened[0].body
    [call] = targets[kind].opened
    route, seen_head, responder = call.route, call.head, call.responder
    assert route.target is kind and route.endpoint == endpoint and route.port is HTTP
    assert seen_head.authority == authority
    assert isinstance(responder, GuardedExchange) and responder.responder is RESPONDER
    assert sum(len(t.opened) for t in targets.values()) == 1


@pytest.mark.parametrize(("authority", "reason"), [
    (b"nope.shop", Reason.unknown_service), (b"web.shop:81", Reason.unknown_service),
    (b"bad host", Reason.bad_request), (b"", Reason.bad_request),
])
def test_dispatch_unknown_or_malformed_authority(authority: bytes, reason: Reason) -> None:
    pipeline, targets = edge_pipeline()
    with pytest.raises(MeshError) as caught:
        pipeline.dispatch(SourceKind.service_bus, head(authority), RESPONDER)
    assert caught.value.reason is reason
    assert all(t.opened == [] for t in targets.values())


def test_dispatch_resolved_honours_the_hint() -> None:
    pipeline, targets = edge_pipeline()
    for _ in range(2):
        pipeline.dispatch_resolved(SourceKind.hub, head(b"web.shop"), RESPONDER, "shop/web", 80,
                                   ("10.1.0.2", 8080))
    assert [call.endpoint for call in targets[TargetKind.service_bus].opened] == [LOCAL_B, LOCAL_B]


@pytest.mark.parametrize(("key", "port"), [("shop/nope", 80), ("web", 80), ("shop/web", 81)])
def test_dispatch_resolved_unknown_service_or_port(key: str, port: int) -> None:
    pipeline, _ = edge_pipeline()
    with pytest.raises(MeshError) as caught:
        pipeline.dispatch_resolved(SourceKind.tunnel, head(b"x"), RESPONDER, key, port, None)
    assert caught.value.reason is Reason.unknown_service and caught.value.status == 404


def test_dispatch_resolved_follows_a_new_catalog() -> None:
    """What another node resolved is remembered per catalog: a new catalog's service is the
    one used, and a port it no longer has is refused."""
    pipeline, targets = edge_pipeline()
    pipeline.dispatch_resolved(SourceKind.hub, head(b"x"), RESPONDER, "shop/web", 80, None)
    moved = Service("shop", "web", "10.96.0.10", (ADMIN,), {"admin": (LOCAL_A,)})
    pipeline.catalog = Catalog([moved], NODES, revision=2)
    with pytest.raises(MeshError) as caught:
        pipeline.dispatch_resolved(SourceKind.hub, head(b"x"), RESPONDER, "shop/web", 80, None)
    assert caught.value.reason is Reason.unknown_service
    pipeline.dispatch_resolved(SourceKind.hub, head(b"x"), RESPONDER, "shop/web", 9000, None)
    first, second = [call.route for call in targets[TargetKind.service_bus].opened]
    assert first is not None and second is not None
    assert first.service is svc("web") and first.port is HTTP
    assert second.service is moved and second.port is ADMIN and second.endpoint is LOCAL_A


def test_dispatch_resolved_other_port() -> None:
    pipeline, targets = router_pipeline()
    pipeline.dispatch_resolved(SourceKind.tunnel, head(b"x"), RESPONDER, "shop/web", 9000, None)
    [route] = [call.route for call in targets[TargetKind.cluster_ip].opened]
    assert route.port is ADMIN


def test_rules_reject_a_forbidden_route() -> None:
    pipeline, targets = edge_pipeline(
        rules={SourceKind.service_bus: frozenset({TargetKind.service_bus})})
    pipeline.dispatch(SourceKind.service_bus, head(b"web.shop"), RESPONDER)  # local: allowed
    with pytest.raises(MeshError) as caught:
        pipeline.dispatch(SourceKind.service_bus, head(b"remote.shop"), RESPONDER)
    assert caught.value.reason is Reason.forbidden_route and caught.value.status == 403
    assert "service-bus" in caught.value.detail and "hub" in caught.value.detail
    assert targets[TargetKind.hub].opened == []


@pytest.mark.parametrize(("role", "source"), [
    (Role.edge, SourceKind.router),    # a source an edge does not have
    (Role.router, SourceKind.hub),     # a source a router does not have
    (Role.router, SourceKind.service_bus),
])
def test_default_rules_reject_sources_the_role_does_not_have(role: Role,
                                                             source: SourceKind) -> None:
    pipeline, targets = edge_pipeline() if role is Role.edge else router_pipeline()
    with pytest.raises(MeshError) as caught:
        pipeline.dispatch(source, head(b"web.shop"), RESPONDER)
    assert caught.value.reason is Reason.forbidden_route
    assert all(t.opened == [] for t in targets.values())


def test_router_relays_edge_to_edge_through_its_tunnels() -> None:
    pipeline, targets = router_pipeline()
    pipeline.dispatch_resolved(SourceKind.tunnel, head(b"x"), RESPONDER, "shop/remote", 80,
                               ("10.2.0.1", 8080))
    [route] = [call.route for call in targets[TargetKind.tunnel].opened]
    assert route.peer == "edge-2" and route.endpoint == EDGE_2


def test_missing_target_is_an_error_not_a_crash() -> None:
    pipeline = Pipeline(Role.edge, "edge-1", CATALOG)
    pipeline.add_target(ScriptedTarget(TargetKind.service_bus))
    with pytest.raises(MeshError) as caught:
        pipeline.dispatch(SourceKind.service_bus, head(b"cloud.shop"), RESPONDER)
    assert caught.value.reason is Reason.no_endpoint and "tunnel" in caught.value.detail


def test_target_errors_propagate() -> None:
    """A target that raises in open (before sending anything): after a retry elsewhere when
    there is an elsewhere (here there is none), the error propagates to the source."""
    pipeline, targets = edge_pipeline()

    def refuse(route: Route, head: RequestHead, responder: IResponder) -> IRequestBody:
        raise MeshError(Reason.peer_unavailable, "no link to edge-2")

    targets[TargetKind.hub].open = refuse  # type: ignore[method-assign]
    with pytest.raises(MeshError) as caught:
        pipeline.dispatch(SourceKind.service_bus, head(b"remote.shop"), RESPONDER)
    assert caught.value.reason is Reason.peer_unavailable
    assert pipeline.in_flight == 0


def test_a_new_catalog_takes_effect_at_once() -> None:
    pipeline, targets = edge_pipeline()
    moved = Service("shop", "web", "10.96.0.10", (HTTP,), {"http": (EDGE_2,)})
    pipeline.catalog = Catalog([moved], NODES, revision=2)
    pipeline.dispatch(SourceKind.service_bus, head(b"web.shop"), RESPONDER)
    [route] = [call.route for call in targets[TargetKind.hub].opened]
    assert route.service is moved and route.peer == "edge-2"


def test_dispatch_resolved_only_considers_tcp_ports() -> None:
    udp = ServicePort("dns-udp", 53, 53, "UDP")
    tcp = ServicePort("dns-tcp", 53, 5353, "TCP")
    dns = Service("shop", "dns", "10.96.1.53", (udp, tcp),
                  {"dns-udp": (Endpoint("10.1.0.53", 53, "edge-1"),),
                   "dns-tcp": (Endpoint("10.1.0.53", 5353, "edge-1"),)})
    pipeline, targets = edge_pipeline()
    pipeline.catalog = Catalog([dns], NODES)
    pipeline.dispatch(SourceKind.service_bus, head(b"dns.shop:53"), RESPONDER)
    pipeline.dispatch_resolved(
        SourceKind.hub, head(b"dns.shop:53"), RESPONDER, "shop/dns", 53, None)
    [by_name, resolved] = [call.route for call in targets[TargetKind.service_bus].opened]
    assert by_name.port is tcp
    assert resolved.port is tcp and resolved.endpoint is not None and resolved.endpoint.port == 5353
