"""/peers lists every link, past the old cap of 4096, whole or in pages; tracking a new link
costs O(1) however many are tracked.

Before: the observer tracked at most ``max_peers`` (4096) links, counting connected ones,
so /peers stopped at 4096 while /edges listed them all, and every new link past the cap
scanned every tracked one for the oldest disconnected.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.web.resource import getChildForRequest
from twisted.web.server import Site
from twisted.web.test.requesthelper import DummyRequest

from edgemesh.catalog import Catalog
from edgemesh.observability import ObservabilityConfig
from edgemesh.roles import RouterConfig, RouterNode, build_router

EDGES = 5000


class FakeLink:
    def __init__(self) -> None:
        self.rtt = 0.002
        self.closed = False
        self.exchanges: dict[int, object] = {}


def get(node: RouterNode, path: bytes, **args: str) -> tuple[int, dict[bytes, bytes], Any]:
    site = node.listeners["admin"].factory
    assert isinstance(site, Site)
    request = DummyRequest(path.lstrip(b"/").split(b"/"))
    for name, value in args.items():
        request.addArg(name.encode(), value.encode())
    body = getChildForRequest(site.resource, request).render(request)
    assert isinstance(body, bytes)
    headers = {
        name.lower(): values[0] for name, values in request.responseHeaders.getAllRawHeaders()}
    return request.responseCode or 200, headers, json.loads(body)


@pytest.fixture
def router() -> RouterNode:
    node = build_router(
        MemoryReactorClock(), RouterConfig(catalog=Catalog.empty(), http=None, admin="tcp:7790"))
    for i in range(EDGES):
        node.observer.link_up(f"edge-{i:05}", "tunnel", FakeLink())
    return node


def test_peers_lists_every_link_past_the_old_cap(router: RouterNode) -> None:
    assert router.observer.config.max_peers == 4096 < EDGES
    status, headers, rows = get(router, b"/peers")
    assert status == 200 and len(rows) == EDGES, "every connected link (before: 4096)"
    assert headers[b"x-edgemesh-total"] == str(EDGES).encode()
    assert [row["peer"] for row in rows] == [f"edge-{i:05}" for i in range(EDGES)]
    assert b"x-edgemesh-continue" not in headers


def test_peers_in_pages(router: RouterNode) -> None:
    seen: list[str] = []
    args = {"limit": "1500"}
    for _ in range(10):
        status, headers, rows = get(router, b"/peers", **args)
        assert status == 200 and len(rows) <= 1500
        seen += [row["peer"] for row in rows]
        token = headers.get(b"x-edgemesh-continue")
        if token is None:
            break
        assert headers[b"link"] == b'</peers?limit=1500&continue=' + token + b'>; rel="next"'
        args = {"limit": "1500", "continue": token.decode()}
    assert seen == [f"edge-{i:05}" for i in range(EDGES)], "each link once, in order, 4 pages"
    # A link that goes and comes back while a client pages is not lost either (keyed, not
    # positional): the pages continue after a (peer, link), not at an offset.
    _, headers, first = get(router, b"/peers", limit="2")
    router.observer.link_up("edge-00000a", "tunnel", FakeLink())
    _, _, second = get(
        router, b"/peers", limit="2", **{"continue": headers[b"x-edgemesh-continue"].decode()})
    assert [r["peer"] for r in first + second] == [
        "edge-00000", "edge-00001", "edge-00002", "edge-00003"]


@pytest.mark.parametrize(
    ("args", "why"),
    [({"limit": "0"}, "limit"), ({"limit": "x"}, "limit"), ({"limit": "10001"}, "limit"),
     ({"continue": "%%%"}, "continue"), ({"continue": "WzFd"}, "continue")],  # WzFd: [1]
)
def test_bad_paging_arguments_are_400(router: RouterNode, args: dict[str, str], why: str) -> None:
    status, headers, body = get(router, b"/peers", **args)
    assert status == 400 and headers[b"x-edgemesh-error"] == b"bad-request"
    assert body["error"].startswith(why)


def test_tracking_a_link_does_not_scan_the_others() -> None:
    """Past the cap of disconnected links, a new one forgets the oldest without looking at
    the rest (before: a scan of every tracked link per new link)."""
    router = build_router(MemoryReactorClock(), RouterConfig(catalog=Catalog.empty(), http=None))
    observer = router.observer
    observer.configure(ObservabilityConfig(max_peers=100))
    links = [FakeLink() for _ in range(300)]
    for i, link in enumerate(links):
        observer.link_up(f"edge-{i}", "tunnel", link)

    class NoScan(dict):  # type: ignore[type-arg]
        def values(self) -> Any:
            raise AssertionError("scanned every peer")

        def items(self) -> Any:
            raise AssertionError("scanned every peer")

        def __iter__(self) -> Any:
            raise AssertionError("scanned every peer")

    observer.peers = NoScan(observer.peers)
    for link in links[:250]:
        observer.link_down(link, "gone")
    for i in range(300, 400):
        observer.link_up(f"edge-{i}", "tunnel", FakeLink())
    observer.link_up("edge-249", "tunnel", FakeLink())  # back
    assert len(observer.peers) == 50 + 100 + 100, "connected ones, and the 100 newest gone"
    assert ("edge-149", "tunnel") not in observer.peers and ("edge-150", "tunnel") in observer.peers
