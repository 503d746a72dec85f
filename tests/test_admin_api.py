"""
The admin API's operations pages: /readyz, /peers, /config, /metrics, and where the admin
listener binds (the older pages are in test_admin.py).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.test.iosim import ConnectionCompleter
from twisted.web.resource import getChildForRequest
from twisted.web.server import Site
from twisted.web.test.requesthelper import DummyRequest

from edgemesh.catalog import Catalog, Endpoint, Node, Service, ServicePort
from edgemesh.observability import REDACTED, ObservabilityConfig, config_to_json
from edgemesh.roles import EdgeConfig, EdgeNode, RouterConfig, RouterNode, build_edge, build_router
from edgemesh.roles._admin import admin_endpoint, admin_site
from edgemesh.security import TLSConfig
from edgemesh.transports import FrontLimits


def make_catalog(revision: int = 4) -> Catalog:
    return Catalog(
        services=[
            Service("default", "web", "10.96.0.10", (ServicePort("http", 80, "http"),),
                    {"http": (Endpoint("10.1.0.1", 8080, "edge-1"),)})
        ],
        nodes=[Node("edge-1", True, "127.0.0.1", 7701)],
        revision=revision,
    )


@pytest.fixture
def reactor() -> MemoryReactorClock:
    return MemoryReactorClock()


def router_node(reactor: MemoryReactorClock, **settings: Any) -> RouterNode:
    return build_router(reactor, RouterConfig(catalog=make_catalog(), admin="tcp:7790", **settings))


def edge_node(reactor: MemoryReactorClock, tmp_path: Path, catalog: Catalog | None = None,
              **settings: Any) -> EdgeNode:
    return build_edge(reactor, EdgeConfig(
        node="edge-1", state_dir=str(tmp_path), router="tcp:127.0.0.1:7700",
        catalog=catalog, admin="tcp:7791", **settings))


def get(node: RouterNode | EdgeNode, path: bytes,
        accept: bytes | None = None) -> tuple[int, str, Any]:
    """(status, content type, JSON or text) of ``path`` on ``node``'s admin site."""
    site = node.listeners["admin"].factory
    assert isinstance(site, Site)
    request = DummyRequest(path.lstrip(b"/").split(b"/"))
    if accept is not None:
        request.requestHeaders.addRawHeader(b"Accept", accept)
    body = getChildForRequest(site.resource, request).render(request)
    assert isinstance(body, bytes)
    (content_type,) = request.responseHeaders.getRawHeaders(b"Content-Type") or [b""]
    value = json.loads(body) if content_type == b"application/json" else body.decode()
    return request.responseCode or 200, content_type.decode(), value


# -- where it listens ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("tcp:7790", "tcp:7790:interface=127.0.0.1"),
        ("7790", "tcp:7790:interface=127.0.0.1"),
        ("tcp:port=7790:backlog=5", "tcp:port=7790:backlog=5:interface=127.0.0.1"),
        ("tcp6:7790", "tcp6:7790:interface=\\:\\:1"),
        ("tcp:7790:interface=0.0.0.0", "tcp:7790:interface=0.0.0.0"),
        ("unix:/run/edgemesh/admin.sock", "unix:/run/edgemesh/admin.sock"),
    ],
)
def test_admin_endpoint_is_loopback_unless_told(given: str, used: str) -> None:
    assert admin_endpoint(given) == used


def test_admin_listener_binds_loopback(reactor: MemoryReactorClock) -> None:
    router = router_node(reactor, http=None)
    assert router.listeners["admin"].description == "tcp:7790:interface=127.0.0.1"
    router.privilegedStartService()  # type: ignore[no-untyped-call]
    assert [(port, interface) for port, _, _, interface in reactor.tcpServers if port == 7790] == [
        (7790, "127.0.0.1")
    ]


# -- /readyz ------------------------------------------------------------------------------------


def test_readyz_follows_start_listeners_and_stop(reactor: MemoryReactorClock) -> None:
    router = router_node(reactor)
    status, content_type, body = get(router, b"/readyz")
    assert (status, content_type) == (503, "application/json")
    assert body == {
        "ready": False,
        "checks": {"started": False, "listeners": False, "catalog": True},
        "detail": {"started": "not serving (starting or stopping)",
                   "listeners": "not listening: admin, http, tunnel"},
        "reason": ("started: not serving (starting or stopping); "
                   "listeners: not listening: admin, http, tunnel"),
    }
    router.startService()
    assert get(router, b"/readyz")[::2] == (200, {"ready": True, "detail": {}, "checks": {
        "started": True, "listeners": True, "catalog": True}})
    router.stopService()
    status, _, body = get(router, b"/readyz")
    assert status == 503 and body["checks"]["started"] is False


def test_readyz_gates(reactor: MemoryReactorClock) -> None:
    router = router_node(reactor)
    router.startService()
    router.observer.readiness.set("kubernetes", False, "watch not synced")
    status, _, body = get(router, b"/readyz")
    assert status == 503
    assert body["checks"]["kubernetes"] is False
    assert body["detail"]["kubernetes"] == "watch not synced"
    router.observer.readiness.set("kubernetes", True)
    assert get(router, b"/readyz")[0] == 200
    router.observer.readiness.clear("kubernetes")
    assert "kubernetes" not in get(router, b"/readyz")[2]["checks"]


def test_readyz_router_waits_for_its_catalog_source(reactor: MemoryReactorClock) -> None:
    router = build_router(
        reactor, RouterConfig(catalog=Catalog.empty(), catalog_pending=True, admin="tcp:7790"))
    router.startService()
    status, _, body = get(router, b"/readyz")
    assert status == 503 and body["checks"]["catalog"] is False
    router.set_catalog(make_catalog())
    assert get(router, b"/readyz")[0] == 200


def test_readyz_edge_needs_a_catalog(reactor: MemoryReactorClock, tmp_path: Path) -> None:
    edge = edge_node(reactor, tmp_path)
    edge.startService()
    status, _, body = get(edge, b"/readyz")
    assert status == 503 and body["checks"] == {
        "started": True, "listeners": True, "catalog": False}
    router = router_node(reactor, http=None)
    router.startService()
    pump = ConnectionCompleter(reactor).succeedOnce()
    assert pump is not None
    pump.flush()  # the router's snapshot arrives
    assert edge.catalog.revision == 4
    assert get(edge, b"/readyz")[0] == 200


def test_readyz_says_why_the_stored_catalog_is_not_used(
        reactor: MemoryReactorClock, tmp_path: Path) -> None:
    from edgemesh.catalog._store import PREVIOUS_FILE, STORE_FILE

    (tmp_path / STORE_FILE).write_bytes(b"")
    (tmp_path / PREVIOUS_FILE).write_bytes(b"\x92garbage")
    edge = edge_node(reactor, tmp_path)
    edge.startService()
    status, _, body = get(edge, b"/readyz")
    assert status == 503
    why = body["detail"]["catalog"]
    assert why.startswith("no catalog yet (none usable stored: "), why
    assert f"{STORE_FILE}: empty (truncated)" in why and PREVIOUS_FILE in why, why
    # Nothing stored at all reads as before.
    assert get(edge_node(reactor, tmp_path / "fresh"), b"/readyz")[2]["detail"]["catalog"] == \
        "no catalog yet (none stored, none given, none pushed)"


def test_readyz_edge_with_a_given_catalog(reactor: MemoryReactorClock, tmp_path: Path) -> None:
    edge = edge_node(reactor, tmp_path, catalog=make_catalog(revision=0))
    edge.startService()
    assert get(edge, b"/readyz")[0] == 200


# -- /peers ----------------------------------------------------------------------------------


def test_a_page_a_node_lacks_is_a_json_404_listing_its_pages(
        reactor: MemoryReactorClock, tmp_path: Path) -> None:
    edge = edge_node(reactor, tmp_path)
    status, content_type, body = get(edge, b"/edges")  # a router's page
    assert (status, content_type) == (404, "application/json")
    assert body["error"] == "no page /edges on this node"
    assert "/readyz" in body["pages"] and "/edges" not in body["pages"]
    assert "/edges" in get(router_node(reactor, http=None), b"/nope")[2]["pages"]


def test_peers_of_edge_and_router(reactor: MemoryReactorClock, tmp_path: Path) -> None:
    router = router_node(reactor, http=None)
    edge = edge_node(reactor, tmp_path)
    assert get(edge, b"/peers")[::2] == (200, [])
    router.startService()
    edge.startService()
    pump = ConnectionCompleter(reactor).succeedOnce()
    assert pump is not None
    pump.flush()
    reactor.advance(3)
    status, content_type, peers = get(edge, b"/peers")
    assert (status, content_type) == (200, "application/json")
    (row,) = peers
    assert row == {
        "peer": "router", "link": "tunnel", "mode": "relayed", "connected": True,
        "connected_since": 0.0, "connected_for": 3.0, "disconnected_at": None, "last_reason": None,
        "reconnects": 0, "rtt": None, "streams": 0,
    }
    (row,) = get(router, b"/peers")[2]
    assert (row["peer"], row["link"], row["mode"], row["connected"]) == (
        "edge-1", "tunnel", "direct", True)
    edge.links["router"].close_now("test")
    pump.flush()
    (row,) = get(router, b"/peers")[2]
    assert row["connected"] is False and row["disconnected_at"] == 3.0 and row["rtt"] is None


# -- /config ---------------------------------------------------------------------------------


def test_config_shows_the_effective_options(reactor: MemoryReactorClock, tmp_path: Path) -> None:
    router = router_node(reactor, request_timeout=7.0,
                         observability=ObservabilityConfig(access_log=True, max_services=10))
    status, content_type, body = get(router, b"/config")
    assert (status, content_type) == (200, "application/json")
    assert body["role"] == "router" and body["node"] == "router"
    assert body["tunnel"] == "tcp:7700" and body["admin"] == "tcp:7790"
    assert body["request_timeout"] == 7.0
    assert body["catalog"] == {"revision": 4, "services": 1, "nodes": 1}
    assert body["front"]["max_body_bytes"] == 1 << 30
    assert body["observability"] == {"access_log": True, "max_services": 10, "max_peers": 4096}
    assert body["tls"] is None
    edge = edge_node(reactor, tmp_path)
    body = get(edge, b"/config")[2]
    assert body["role"] == "edge" and body["state_dir"] == str(tmp_path)
    assert body["router"] == "tcp:127.0.0.1:7700"


def test_config_never_shows_key_material(tmp_path: Path) -> None:
    tls = TLSConfig.from_directory(str(tmp_path / "tls"), "edge-1")
    shown = config_to_json(RouterConfig(catalog=make_catalog(), tls=tls))
    assert isinstance(shown, dict)
    assert shown["tls"]["key"] == str(tmp_path / "tls" / "edge-1.key"), "paths are shown"

    @dataclasses.dataclass
    class Odd:
        network: ipaddress.IPv4Network
        pem: str = "-----BEGIN PRIVATE KEY-----\nMIIE...\n-----END PRIVATE KEY-----\n"
        raw: bytes = b"\x30\x82"
        hook: Any = print
        names: frozenset[str] = frozenset({"b", "a"})

    assert config_to_json(Odd(ipaddress.IPv4Network("10.0.0.0/8"))) == {
        "pem": REDACTED, "raw": REDACTED, "network": "10.0.0.0/8", "names": ["a", "b"]}


# -- /metrics ----------------------------------------------------------------------------------


def test_metrics_page(reactor: MemoryReactorClock, tmp_path: Path) -> None:
    edge = edge_node(reactor, tmp_path, catalog=make_catalog())
    status, content_type, text = get(edge, b"/metrics")
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert {"edgemesh_info", "edgemesh_requests", "edgemesh_errors", "edgemesh_catalog_revision",
            "edgemesh_peer_up", "process_cpu_seconds"} <= set(families)
    assert "edgemesh_edge_catalog_lag_revisions" not in families, "router only"
    (sample,) = families["edgemesh_catalog_revision"].samples
    assert sample.value == 4
    status, content_type, text = get(edge, b"/metrics", accept=b"application/openmetrics-text")
    assert content_type.startswith("application/openmetrics-text") and text.endswith("# EOF\n")


def test_router_metrics_have_the_edges(reactor: MemoryReactorClock, tmp_path: Path) -> None:
    router = router_node(reactor, http=None)
    edge = edge_node(reactor, tmp_path)
    router.startService()
    edge.startService()
    pump = ConnectionCompleter(reactor).succeedOnce()
    assert pump is not None
    pump.flush()
    families = {f.name: f for f in text_string_to_metric_families(get(router, b"/metrics")[2])}
    lag = {
        s.labels["edge"]: s.value for s in families["edgemesh_edge_catalog_lag_revisions"].samples}
    assert lag == {"edge-1": 0}
    up = {
        (s.labels["peer"], s.labels["link"]): s.value for s in families["edgemesh_peer_up"].samples}
    assert up == {("edge-1", "tunnel"): 1}


def test_metrics_over_http(reactor: MemoryReactorClock) -> None:
    """The whole site, HTTP parser included."""
    router = router_node(reactor, http=None)
    protocol = admin_site(router).buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
    assert protocol is not None
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(b"GET /metrics HTTP/1.1\r\nHost: admin\r\n\r\n")
    head, _, body = transport.value().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"Content-Type: text/plain; version=0.0.4" in head
    assert b"edgemesh_info{" in body


def test_a_trickled_head_is_cut_at_the_header_timeout(reactor: MemoryReactorClock) -> None:
    """twisted.web's idle timer starts over at every byte: one head byte every few seconds
    held an admin connection for ever.  The head must be whole within --header-timeout of
    its first byte; a kept-alive connection's next request gets the same time."""
    router = router_node(reactor, http=None, front=FrontLimits(header_timeout=4.0))
    site = admin_site(router)

    def connect() -> tuple[Any, StringTransport]:
        protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    slow, slow_transport = connect()
    for byte in b"GET /healthz HTTP/1.1\r\n":
        slow.dataReceived(bytes([byte]))
        reactor.advance(0.5)
        if slow_transport.disconnecting:
            break
    assert slow_transport.disconnecting, "cut at 4 s, though a byte came every 0.5 s"
    assert reactor.seconds() == pytest.approx(4.0)

    kept, kept_transport = connect()
    kept.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")
    reactor.advance(30)  # answered: no deadline runs while the connection is idle
    assert b"HTTP/1.1 " in kept_transport.value() and not kept_transport.disconnecting
    kept.dataReceived(b"GET /healthz HTTP/1.1\r\n")
    reactor.advance(4.1)
    assert kept_transport.disconnecting
