"""``--router *=ENDPOINT`` (router replicas behind one name, their names unknown before the
dial): any router certificate of the CA is taken, and nothing else is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from test_tls import (
    CATALOG,
    PKI,
    ROUTER_PORT,
    Recorder,
    answer_dial,
    complete,
    edge_refuses_server,
    link_factory,
    logs,
    make_router,
    pki,
    pytestmark,
    reactor,
    start,
    tls_server,
)
from twisted.internet.testing import MemoryReactorClock

from edgemesh.roles import EdgeConfig, build_edge
from edgemesh.routing import ROUTER_PEER
from edgemesh.security import make_ca, make_node_cert

# Fixtures, used by name, and test_tls's mark (its hand-made TLS server hands pyOpenSSL
# objects to pyOpenSSL, which warns).
__all__ = ["logs", "pki", "pytestmark", "reactor"]

ANY = f"*=tcp:127.0.0.1:{ROUTER_PORT}"


def test_any_router_certificate_of_the_ca_is_taken(reactor: MemoryReactorClock, pki: PKI,
                                                   tmp_path: Path) -> None:
    router = make_router(reactor, pki)
    edge = make_any(reactor, pki, tmp_path)
    complete(reactor)
    link = edge.links[ROUTER_PEER]
    assert link.peer is not None and link.peer.node == "router"
    assert set(router.edges) == {"edge-1"}


def make_any(reactor: MemoryReactorClock, pki: PKI, tmp_path: Path) -> Any:
    node = build_edge(reactor, EdgeConfig(
        node="edge-1", state_dir=str(tmp_path / "state-any"), router=ANY, proxy=None,
        hub=None, catalog=CATALOG, tls=pki.config("edge-1")))
    start(node)
    return node


def test_an_edge_certificate_is_not_a_router(reactor: MemoryReactorClock, pki: PKI,
                                             tmp_path: Path) -> None:
    edge = make_any(reactor, pki, tmp_path)
    recorder = Recorder()
    # A valid certificate of the mesh whose hello says router: the role in it says edge.
    server = tls_server(reactor, pki.ca, pki.issued("edge-2"),
                        link_factory(reactor, recorder, "edge-2", "router", False))
    answer_dial(reactor, server).flush()
    assert ROUTER_PEER not in edge.links


def test_a_router_certificate_of_another_ca_is_refused(reactor: MemoryReactorClock, pki: PKI,
                                                       tmp_path: Path,
                                                       logs: list[dict[str, Any]]) -> None:
    edge = make_any(reactor, pki, tmp_path)
    other = make_ca("someone else's CA")
    line = edge_refuses_server(reactor, edge, make_node_cert(other, "router", router=True),
                               pki.ca, logs)
    assert "certificate verify failed" in line, line
