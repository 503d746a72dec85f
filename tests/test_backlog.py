"""Listen queues: every listener gets a large backlog unless its endpoint string names one
(Twisted's default of 50 drops the SYNs of edges that reconnect together)."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.testing import MemoryReactorClock

from edgemesh.catalog import Catalog
from edgemesh.roles import EdgeConfig, RouterConfig, build_edge, build_router
from edgemesh.transports import DEFAULT_BACKLOG, with_backlog


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("tcp:7700", f"tcp:7700:backlog={DEFAULT_BACKLOG}"),
        ("tcp:7700:interface=127.0.0.1", f"tcp:7700:interface=127.0.0.1:backlog={DEFAULT_BACKLOG}"),
        ("TCP6:7700:interface=\\:\\:1", f"TCP6:7700:interface=\\:\\:1:backlog={DEFAULT_BACKLOG}"),
        ("unix:/run/edgemesh.sock", f"unix:/run/edgemesh.sock:backlog={DEFAULT_BACKLOG}"),
        ("ssl:443:privateKey=k.pem", f"ssl:443:privateKey=k.pem:backlog={DEFAULT_BACKLOG}"),
        # An explicit backlog wins, wherever it stands.
        ("tcp:7700:backlog=128", "tcp:7700:backlog=128"),
        ("tcp:7700:backlog=10:interface=127.0.0.1", "tcp:7700:backlog=10:interface=127.0.0.1"),
        # A colon escaped inside a value is not a separator: "\:backlog=1" is part of a path.
        ("unix:/tmp/a\\:backlog=1", f"unix:/tmp/a\\:backlog=1:backlog={DEFAULT_BACKLOG}"),
        # Types without a backlog, and what Twisted will refuse anyway, are left alone.
        ("systemd:domain=INET:index=0", "systemd:domain=INET:index=0"),
        ("7700", "7700"),
    ],
)
def test_with_backlog(given: str, expected: str) -> None:
    assert with_backlog(given) == expected


def backlogs(reactor: MemoryReactorClock) -> dict[int, int]:
    return {port: backlog for port, _, backlog, _ in reactor.tcpServers}


def test_router_listeners_have_a_large_backlog() -> None:
    reactor = MemoryReactorClock()
    router = build_router(reactor, RouterConfig(
        catalog=Catalog.empty(), tunnel="tcp:7000:interface=127.0.0.1", http="tcp:7080",
        admin="tcp:7090"))
    router.privilegedStartService()  # type: ignore[no-untyped-call]
    # Twisted's default was 50 for all three.
    assert backlogs(reactor) == {
        7000: DEFAULT_BACKLOG, 7080: DEFAULT_BACKLOG, 7090: DEFAULT_BACKLOG}
    assert DEFAULT_BACKLOG >= 4096


def test_edge_listeners_have_a_large_backlog_and_an_explicit_one_wins(tmp_path: Path) -> None:
    reactor = MemoryReactorClock()
    edge = build_edge(reactor, EdgeConfig(
        node="edge-1", state_dir=str(tmp_path), router=None, hub="tcp:7701",
        proxy="tcp:7781:backlog=64", admin="tcp:7791"))
    edge.privilegedStartService()  # type: ignore[no-untyped-call]
    assert backlogs(reactor) == {7701: DEFAULT_BACKLOG, 7781: 64, 7791: DEFAULT_BACKLOG}


def test_dns_tcp_listener_has_a_large_backlog() -> None:
    from capturekit import UDPMemoryReactor

    from edgemesh.dns import DNSConfig
    from edgemesh.dns._server import DNSService

    reactor = UDPMemoryReactor()
    config = DNSConfig(address="127.0.0.1", port=5353, upstreams=())
    service = DNSService(reactor, object(), config)  # type: ignore[arg-type]
    service.privilegedStartService()  # type: ignore[no-untyped-call]
    assert backlogs(reactor) == {5353: DEFAULT_BACKLOG}
