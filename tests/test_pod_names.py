"""StatefulSet pod names (issue 12): a headless Service whose EndpointSlice endpoints carry
``hostname`` — ``pod-0.svc``, ``pod-0.svc.ns``, ``pod-0.svc.ns.svc[.cluster.local]`` reach
that one pod.  The manifest keeps the hostname, snapshots and deltas carry it in an optional
side table (old nodes ignore it), the catalog resolves pod names to a service narrowed to
that pod, routing picks only it (not ready: 503), DNS and capture give it its own address."""

from __future__ import annotations

import ipaddress
from collections import Counter
from typing import Any

import msgpack
import pytest
from twisted.internet.defer import Deferred
from twisted.names import dns
from twisted.names.error import AuthoritativeDomainError

from edgemesh.capture import ServiceAddresses, VirtualIPs
from edgemesh.catalog import (
    Catalog,
    Endpoint,
    Node,
    Service,
    ServicePort,
    SnapshotError,
    apply_delta,
    catalog_from_objects,
    catalog_from_wire,
    catalog_to_wire,
    delta_from_wire,
    delta_to_wire,
    diff_catalogs,
)
from edgemesh.catalog._manifest import ManifestError
from edgemesh.dns import MeshResolver, classify
from edgemesh.exchange import MeshError, Reason, Role, SourceKind, TargetKind
from edgemesh.routing import RoundRobin, decide

NODES = (
    Node("cloud-1", edge=False, hub_host=None, hub_port=7701),
    Node("edge-1", edge=True, hub_host="127.0.0.1", hub_port=17701),
    Node("edge-2", edge=True, hub_host="127.0.0.1", hub_port=17702),
)
TCP = ServicePort("tcp-db", 5432, 5432)
POD_0 = Endpoint("10.1.0.10", 5432, "edge-1", hostname="db-0", pod="shop/db-0",
                 for_zones=("z9",))
POD_1 = Endpoint("10.2.0.11", 5432, "edge-2", hostname="db-1", pod="shop/db-1")
POD_2_DOWN = Endpoint("10.2.0.12", 5432, "edge-2", ready=False, hostname="db-2",
                      pod="shop/db-2")
ANON = Endpoint("10.2.0.13", 5432, "edge-2")


def make_catalog(revision: int = 1, **extra: tuple[Endpoint, ...]) -> Catalog:
    endpoints = {"tcp-db": (POD_0, POD_1, POD_2_DOWN, ANON), **extra}
    return Catalog([
        Service("shop", "db", None, (TCP,), endpoints, internal_traffic_policy="Local"),
        # A ClusterIP service with hostnames: no pod names (as Kubernetes DNS).
        Service("shop", "web", "10.96.0.5", (TCP,), {"tcp-db": (POD_0,)}),
        # Service "db" of namespace "web-0"... no: service "x" of namespace "db" shadows
        # the pod name "x.db" (a service name of that shape wins).
        Service("db", "db-0", "10.96.0.6", (TCP,), {"tcp-db": (ANON,)}),
        Service("default", "db", None, (TCP,), {"tcp-db": (POD_1,)}),
    ], NODES, revision)


CATALOG = make_catalog()


# -- resolution -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [
    b"db-1.db.shop", b"db-1.db.shop.svc", b"db-1.db.shop.svc.cluster.local",
    b"DB-1.db.shop.svc.cluster.local.", b"db-1.db.shop:5432",
])
def test_pod_names_resolve_to_that_pod_only(name: bytes) -> None:
    service, port = CATALOG.resolve(name)
    assert service.key == "shop/db" and port is TCP
    assert service.endpoints["tcp-db"] == (POD_1,)


def test_two_labels_name_a_pod_of_the_default_namespace() -> None:
    service, _ = CATALOG.resolve(b"db-1.db:5432")
    assert service.key == "default/db" and service.endpoints["tcp-db"] == (POD_1,)


def test_a_service_name_of_the_same_shape_wins() -> None:
    """``db-0.db`` is service db-0 of namespace db when the catalog has one."""
    service, _ = CATALOG.resolve(b"db-0.db:5432")
    assert service.key == "db/db-0" and service.cluster_ip == "10.96.0.6"


def test_the_service_name_itself_still_has_every_endpoint() -> None:
    service, _ = CATALOG.resolve(b"db.shop:5432")
    assert len(service.endpoints["tcp-db"]) == 4


@pytest.mark.parametrize(("name", "why"), [
    # Each says what is missing, in the terms the name was read in.
    (b"db-9.db.shop:5432", "service shop/db has no pod db-9"),
    (b"db-0.web.shop:5432", "service shop/web is not headless, so it has no pod names"),
    (b"db-0.nope.shop:5432", "db-0.nope.shop is not a service name of this cluster"),
    (b"db-9.db:5432", "no service db/db-9, and service default/db has no pod db-9"),
    (b"a.b.c.d:5432", "a.b.c.d is not a service name of this cluster"),
])
def test_unknown_pods_are_unknown_services(name: bytes, why: str) -> None:
    with pytest.raises(MeshError) as caught:
        CATALOG.resolve(name)
    assert caught.value.reason is Reason.unknown_service and caught.value.status == 404
    assert why in str(caught.value)


def test_the_narrowed_service_drops_topology_preferences() -> None:
    """internalTrafficPolicy Local and zone hints are for balancing a service; a pod asked
    for by name is that pod wherever it runs."""
    service, _ = CATALOG.resolve(b"db-0.db.shop:5432")
    assert service.internal_traffic_policy == "Cluster"
    assert service.endpoints["tcp-db"][0].for_zones == ()
    assert service.endpoints["tcp-db"][0].host == POD_0.host


# -- routing ----------------------------------------------------------------------------------


def route(name: bytes, node: str = "edge-2", role: Role = Role.edge,
          balancer: RoundRobin | None = None) -> Any:
    service, port = CATALOG.resolve(name)
    source = SourceKind.service_bus if role is Role.edge else SourceKind.router
    return decide(CATALOG, role, node, source, service, port, None, balancer or RoundRobin())


def test_routing_picks_only_the_named_pod() -> None:
    """From edge-2, whose own pods db-1 and the anonymous one are nearer: db-0 on edge-1 is
    still the only choice (over the hub), every time."""
    balancer = RoundRobin()
    picked = Counter((r.target, r.endpoint.host, r.peer)
                     for r in (route(b"db-0.db.shop:5432", balancer=balancer)
                               for _ in range(20)))
    assert picked == Counter({(TargetKind.hub, POD_0.host, "edge-1"): 20})
    local = route(b"db-1.db.shop:5432")
    assert (local.target, local.endpoint) == (TargetKind.service_bus, POD_1)
    down_router = route(b"db-1.db.shop:5432", node="router-0", role=Role.router)
    assert (down_router.target, down_router.peer) == (TargetKind.tunnel, "edge-2")


@pytest.mark.parametrize("role", [Role.edge, Role.router])
def test_a_pod_that_is_not_ready_is_503_no_endpoint(role: Role) -> None:
    with pytest.raises(MeshError) as caught:
        route(b"db-2.db.shop:5432", node="edge-1" if role is Role.edge else "router-0",
              role=role)
    assert caught.value.reason is Reason.no_endpoint and caught.value.status == 503


# -- manifest ---------------------------------------------------------------------------------


def slice_objects(hostname: object) -> list[dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "db", "namespace": "shop"},
         "spec": {"clusterIP": "None", "ports": [{"name": "tcp-db", "port": 5432}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "db-x", "namespace": "shop",
                      "labels": {"kubernetes.io/service-name": "db"}},
         "addressType": "IPv4", "ports": [{"name": "tcp-db", "port": 5432}],
         "endpoints": [{"addresses": ["10.1.0.10"], "hostname": hostname, "nodeName": "edge-1"},
                       {"addresses": ["10.1.0.11"], "nodeName": "edge-1"}]},
    ]


def test_the_manifest_keeps_the_hostname() -> None:
    catalog = catalog_from_objects(slice_objects("db-0"))
    service = catalog.service("shop/db")
    assert service is not None and service.cluster_ip is None
    assert [e.hostname for e in service.endpoints["tcp-db"]] == ["db-0", None]
    assert catalog.resolve(b"db-0.db.shop:5432")[0].endpoints["tcp-db"][0].host == "10.1.0.10"


@pytest.mark.parametrize("bad", ["Db-0", "db_0", "x" * 64, 7])
def test_a_bad_hostname_is_refused_with_its_path(bad: object) -> None:
    with pytest.raises(ManifestError, match=r"endpoints\[0\]\.hostname"):
        catalog_from_objects(slice_objects(bad))


# -- the wire ---------------------------------------------------------------------------------


def test_snapshots_carry_hostnames_in_a_side_table() -> None:
    wire = catalog_to_wire(CATALOG)
    assert wire["hostnames"] == {
        "shop/db": {"tcp-db": ["db-0", "db-1", "db-2", None]},
        "shop/web": {"tcp-db": ["db-0"]},
        "default/db": {"tcp-db": ["db-1"]},
    }
    back = catalog_from_wire(msgpack.unpackb(msgpack.packb(wire)))
    assert back == CATALOG


def test_an_older_node_reads_the_snapshot_and_a_newer_one_reads_an_old_snapshot() -> None:
    """The records are as before: without the side table (an old router's push, an old
    edge's disk) the endpoints simply have no hostname."""
    wire = catalog_to_wire(CATALOG)
    old = {k: v for k, v in wire.items() if k != "hostnames"}
    back = catalog_from_wire(old)
    assert all(e.hostname is None for s in back.services.values()
               for es in s.endpoints.values() for e in es)
    plain = Catalog([Service("shop", "x", "10.96.0.9", (TCP,), {"tcp-db": (ANON,)})])
    assert "hostnames" not in catalog_to_wire(plain)


@pytest.mark.parametrize(("table", "problem"), [
    ({"shop/nope": {}}, "no such service"),
    ({"shop/db": {"tcp-db": ["db-0"]}}, "one entry per endpoint"),
    ({"shop/db": {"other": [None]}}, "one entry per endpoint"),
    ({"shop/db": {"tcp-db": ["db-0", "BAD", None, None]}}, "DNS-1123 label"),
    ({"shop/db": {"tcp-db": ["db-0", 1, None, None]}}, "must be a string"),
    ({"shop/db": []}, "must be a map"),
])
def test_a_bad_side_table_is_a_snapshot_error(table: object, problem: str) -> None:
    wire = catalog_to_wire(CATALOG)
    wire["hostnames"] = table
    with pytest.raises(SnapshotError, match=problem):
        catalog_from_wire(wire)


def test_deltas_carry_hostnames() -> None:
    new = make_catalog(2, **{"tcp-db": (POD_0, POD_1, ANON)})
    delta = diff_catalogs(CATALOG, new)
    wire = msgpack.unpackb(msgpack.packb(delta_to_wire(delta)))
    assert "hostnames" in wire
    assert apply_delta(CATALOG, delta_from_wire(wire)) == new


# -- DNS and capture --------------------------------------------------------------------------


def test_classify_pod_names() -> None:
    assert classify("db-0.db.shop.svc.cluster.local").pod == ("shop/db", "db-0")
    assert classify("db-0.db.shop.svc").pod == ("shop/db", "db-0")
    assert classify("db-0.db.shop").pod == ("shop/db", "db-0")
    two = classify("db-0.db")
    assert (two.key, two.pod) == ("db/db-0", ("default/db", "db-0"))
    assert classify("db.shop.svc.cluster.local").pod is None
    assert classify("web").pod is None


def answers(resolver: MeshResolver, name: str) -> Any:
    box: list[Any] = []
    deferred: Deferred[Any] = resolver.query(dns.Query(name.encode(), dns.A, dns.IN))
    deferred.addBoth(box.append)
    return box[0]


def test_dns_and_capture_give_each_pod_its_own_address() -> None:
    """Each pod with a hostname gets a virtual IP of its own: DNS answers its names with
    it, and a captured connection to it reaches that pod only."""
    vips = VirtualIPs(ipaddress.IPv4Network("240.240.0.0/16"))
    addresses = ServiceAddresses(lambda: CATALOG, vips)
    resolver = MeshResolver(addresses)
    found: dict[str, str] = {}
    for pod in ("db-0", "db-1", "db-2"):
        result = answers(resolver, f"{pod}.db.shop.svc.cluster.local")
        (record,) = result[0]
        found[pod] = record.payload.dottedQuad()
        assert answers(resolver, f"{pod}.db.shop")[0][0].payload.dottedQuad() == found[pod]
    service_vip = answers(resolver, "db.shop.svc.cluster.local")[0][0].payload.dottedQuad()
    assert len({*found.values(), service_vip}) == 4
    assert resolver.claims(b"db-0.db.shop") and not resolver.claims(b"db-9.db.shop")
    unknown = answers(resolver, "db-9.db.shop.svc.cluster.local")
    assert unknown.check(AuthoritativeDomainError)
    service, port = addresses.destination(found["db-0"], 5432)
    assert port is TCP and service.endpoints["tcp-db"] == (
        CATALOG.resolve(b"db-0.db.shop:5432")[0].endpoints["tcp-db"])
    whole, _ = addresses.destination(service_vip, 5432)
    assert len(whole.endpoints["tcp-db"]) == 4
