"""The admin API: /healthz, /catalog, /status and the router's /edges, as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.test.iosim import ConnectionCompleter
from twisted.web.resource import getChildForRequest
from twisted.web.server import Site
from twisted.web.test.requesthelper import DummyRequest

from edgemesh.catalog import Catalog, Endpoint, Node, Service, ServicePort, catalog_to_wire
from edgemesh.roles import EdgeConfig, EdgeNode, RouterConfig, RouterNode, build_edge, build_router
from edgemesh.roles._admin import admin_site


def make_catalog(revision: int = 4) -> Catalog:
    return Catalog(
        services=[
            Service(
                "default", "web", "10.96.0.10", (ServicePort("http", 80, "http"),),
                {"http": (Endpoint("10.1.0.1", 8080, "edge-1", zone="z1", pod="default/web-0"),)},
                annotations={"a": "b"},
            )
        ],
        nodes=[Node("edge-1", True, "127.0.0.1", 7701, zone="z1"),
               Node("cloud-1", False, None, 7701)],
        revision=revision,
    )


@pytest.fixture
def reactor() -> MemoryReactorClock:
    return MemoryReactorClock()


@pytest.fixture
def router(reactor: MemoryReactorClock) -> RouterNode:
    return build_router(
        reactor, RouterConfig(catalog=make_catalog(), admin="tcp:7790:interface=127.0.0.1"))


@pytest.fixture
def edge(reactor: MemoryReactorClock, tmp_path: Path) -> EdgeNode:
    return build_edge(
        reactor,
        EdgeConfig(node="edge-1", state_dir=str(tmp_path), router="tcp:127.0.0.1:7700",
                   catalog=make_catalog(revision=0), admin="tcp:7791"),
    )


def site_of(node: RouterNode | EdgeNode) -> Site:
    site = node.listeners["admin"].factory
    assert isinstance(site, Site)
    return site


def get(site: Site, path: bytes, method: bytes = b"GET") -> tuple[int, dict[bytes, Any], Any]:
    """Render ``path`` through the site's resource tree: (status, headers, decoded JSON)."""
    request = DummyRequest(path.lstrip(b"/").split(b"/"))
    request.method = method
    resource = getChildForRequest(site.resource, request)
    body = resource.render(request)
    assert isinstance(body, bytes)
    headers = dict(request.responseHeaders.getAllRawHeaders())
    status = request.responseCode or 200
    if headers.get(b"Content-Type") == [b"application/json"]:
        return status, headers, json.loads(body)
    return status, headers, body


def wire_json(catalog: Catalog) -> Any:
    """catalog_to_wire as it reads after a JSON round trip (tuples become lists)."""
    return json.loads(json.dumps(catalog_to_wire(catalog)))


def test_admin_listener_is_not_a_source(router: RouterNode) -> None:
    assert router.listeners["admin"].description == "tcp:7790:interface=127.0.0.1"
    assert router.listeners["admin"].kind is None
    assert router.listeners["admin"] not in router.pipeline.sources


def test_healthz_503_before_start_200_after(router: RouterNode) -> None:
    site = site_of(router)
    status, headers, body = get(site, b"/healthz")
    assert (status, body) == (503, {"status": "starting"})
    assert headers[b"Content-Type"] == [b"application/json"]
    router.startService()
    assert get(site, b"/healthz")[::2] == (200, {"status": "ok"})
    router.stopService()
    assert get(site, b"/healthz")[0] == 503


def test_catalog_equals_catalog_to_wire(router: RouterNode, edge: EdgeNode) -> None:
    status, _, body = get(site_of(router), b"/catalog")
    assert status == 200
    assert body == wire_json(router.catalog)
    assert body["revision"] == 4
    status, _, body = get(site_of(edge), b"/catalog")
    assert status == 200
    assert body == wire_json(make_catalog(revision=0))


def test_catalog_follows_the_node(router: RouterNode) -> None:
    site = site_of(router)
    newer = Catalog(nodes=[Node("edge-9", True, None, 7701)], revision=11)
    router.set_catalog(newer)
    assert get(site, b"/catalog")[2] == wire_json(newer)


def test_status(router: RouterNode) -> None:
    router.startService()
    status, _, body = get(site_of(router), b"/status")
    assert status == 200
    assert body == {
        "role": "router",
        "node": "router",
        "serving": True,
        "catalog_revision": 4,
        "links": [],
        "pipeline": {
            "role": "router",
            "node": "router",
            "sources": [{"kind": "tunnel", "at": "tcp:7700"}, {"kind": "router", "at": "tcp:7780"}],
            "targets": ["cluster-ip", "tunnel"],
            "rules": {"router": ["cluster-ip", "tunnel"], "tunnel": ["cluster-ip", "tunnel"]},
        },
    }


def test_edge_status(edge: EdgeNode) -> None:
    status, _, body = get(site_of(edge), b"/status")
    assert status == 200
    assert body["role"] == "edge" and body["node"] == "edge-1" and body["serving"] is False
    assert body["pipeline"]["sources"] == [
        {"kind": "tunnel", "at": "tcp:127.0.0.1:7700"},
        {"kind": "hub", "at": "tcp:7701"},
        {"kind": "service-bus", "at": "tcp:7781"},
    ]
    assert body["pipeline"]["targets"] == ["hub", "service-bus", "tunnel"]


def test_router_edges(router: RouterNode, edge: EdgeNode, reactor: MemoryReactorClock) -> None:
    site = site_of(router)
    assert get(site, b"/edges")[::2] == (200, [])
    router.startService()
    edge.startService()
    pump = ConnectionCompleter(reactor).succeedOnce()
    assert pump is not None
    pump.flush()
    status, _, body = get(site, b"/edges")
    assert status == 200
    # connected_for moves with the wall clock (see test_roles' xfail): compare the rest.
    assert [{**row, "connected_for": None} for row in body] == [
        {**row, "connected_for": None, "replica": "router", "local": True}
        for row in router.edges_view()
    ]
    (row,) = body
    assert row["node"] == "edge-1"
    assert row["acked_revision"] == 4 and row["lag"] == 0
    # The router's links show up in /status too.
    assert get(site, b"/status")[2]["links"] == ["edge-1"]
    assert get(site_of(edge), b"/status")[2]["links"] == ["router"]
    assert get(site_of(edge), b"/catalog")[2]["revision"] == 4


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Resource's default 404 page
def test_edge_has_no_edges_page(edge: EdgeNode) -> None:
    status, _, _ = get(site_of(edge), b"/edges")
    assert status == 404


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Resource's default 404 page
def test_unknown_path_is_404(router: RouterNode) -> None:
    assert get(site_of(router), b"/nope")[0] == 404


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # twisted.web's own 405 page
def test_admin_site_over_http(reactor: MemoryReactorClock) -> None:
    """The whole site, HTTP parser included, with a StringTransport."""
    node = build_router(reactor, RouterConfig(catalog=make_catalog(), http=None))
    node.startService()
    site = admin_site(node)
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
    assert protocol is not None
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")
    head, _, body = transport.value().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"Content-Type: application/json" in head
    assert json.loads(body) == {"status": "ok"}
    transport.clear()
    protocol.dataReceived(b"GET /edges HTTP/1.1\r\nHost: admin\r\n\r\n")
    head, _, body = transport.value().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert json.loads(body) == []
    transport.clear()
    protocol.dataReceived(b"POST /healthz HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 405 ")
