"""
Resilience across nodes, on one MemoryReactorClock (see test_roles for the set-up): the
drain on stopService (GOAWAY, listeners closed, deadline), cancellation across a link
(a RESET aborts the pod connection), the relay through the router when a hub cannot be
dialled, ``unsent`` failures, and the options.
"""

# The nodes change state behind mypy's back (a Deferred fired by a pump it cannot see).
# mypy: disable-error-code="unreachable"

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_roles import Mesh as RolesMesh
from test_roles import edge_config, http_client, make_catalog, start
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.test.iosim import ConnectionCompleter, IOPump, connect, makeFakeClient, makeFakeServer

from edgemesh.catalog import Endpoint, Service, ServicePort
from edgemesh.exchange import MeshError, Reason, RequestHead, ResponseHead, TargetKind
from edgemesh.roles import EdgeNode, build_edge, edge_tap, router_tap
from edgemesh.routing import Resilience, Route
from edgemesh.transports import HTTPUpstreamTarget


@pytest.fixture
def reactor() -> MemoryReactorClock:
    return MemoryReactorClock()


class Mesh(RolesMesh):
    def dial(self, address: tuple[str, int]) -> Any:
        (entry,) = [c for c in self.reactor.tcpClients if (c[0], c[1]) == address]
        return entry

    def pod(self, address: tuple[str, int]) -> tuple[Any, StringTransport]:
        """Accept the pending connection to ``address`` as a pod; it says nothing yet."""
        entry = self.dial(address)
        self.reactor.tcpClients.remove(entry)
        pod: Any = entry[2].buildProtocol(None)
        transport = StringTransport()
        pod.makeConnection(transport)
        self.flush()
        return pod, transport

    def join(self, address: tuple[str, int], server_factory: Any) -> IOPump:
        """Complete the pending dial to ``address`` with ``server_factory`` listening."""
        entry = self.dial(address)
        index = self.reactor.tcpClients.index(entry)
        self.reactor.tcpClients.pop(index)
        connector = self.reactor.connectors.pop(index)
        client = entry[2].buildProtocol(None)
        server = server_factory.buildProtocol(IPv4Address("TCP", "127.0.0.9", 50000))
        pump: IOPump = connect(server, makeFakeServer(server), client, makeFakeClient(client),
                               greet=False, clock=self.reactor)
        del connector
        pump.flush()
        self.pumps.append(pump)
        return pump

    def flush(self) -> None:
        # Twice: what one pump delivers may be answered on a pump flushed before it.
        super().flush()
        super().flush()


@pytest.fixture
def mesh(reactor: MemoryReactorClock, tmp_path: Path) -> Mesh:
    return Mesh(reactor, tmp_path)


GET_WEB = b"GET /hello HTTP/1.1\r\nHost: web\r\n\r\n"


# --- drain -------------------------------------------------------------------------------


def test_stop_drains_the_exchanges_in_progress(mesh: Mesh, reactor: MemoryReactorClock) -> None:
    edge = mesh.edge("edge-1")
    mesh.connect()
    client, transport = http_client(edge.listeners["proxy"].factory)
    client.dataReceived(GET_WEB)
    pod, _ = mesh.pod(("10.1.0.1", 8080))
    assert edge.pipeline.in_flight == 1

    stopped = edge.stopService()
    assert stopped is not None and not stopped.called
    assert not edge.serving and edge.pipeline.draining
    assert edge.listeners["proxy"].port is None and edge.listeners["hub"].port is None
    mesh.flush()
    view: Any = mesh.router.pipeline.resilience_view()
    assert "edge-1" in view["draining_peers"], "GOAWAY"

    pod.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    mesh.flush()
    assert transport.value().startswith(b"HTTP/1.1 200 OK\r\n")
    assert stopped.called, "the drain ends with the last exchange"
    assert not edge.running


def test_stop_at_the_drain_deadline(mesh: Mesh, reactor: MemoryReactorClock) -> None:
    edge = mesh.edge("edge-1", resilience=Resilience(drain_timeout=3.0))
    mesh.connect()
    client, _ = http_client(edge.listeners["proxy"].factory)
    client.dataReceived(GET_WEB)
    mesh.pod(("10.1.0.1", 8080))  # never answers
    stopped = edge.stopService()
    assert stopped is not None
    reactor.advance(2.9)
    assert not stopped.called
    reactor.advance(0.2)
    assert stopped.called and not edge.running


def test_the_deadline_answers_a_waiting_client_503_draining(
        mesh: Mesh, reactor: MemoryReactorClock) -> None:
    """At the drain deadline a client still waiting gets the mesh's 503 draining, not a
    connection closed with no answer (and an access log that blamed the client)."""
    edge = mesh.edge("edge-1", resilience=Resilience(drain_timeout=3.0))
    mesh.connect()
    client, transport = http_client(edge.listeners["proxy"].factory)
    client.dataReceived(GET_WEB)
    mesh.pod(("10.1.0.1", 8080))  # never answers
    edge.stopService()
    reactor.advance(3.1)
    assert transport.value().startswith(b"HTTP/1.1 503 "), transport.value()
    assert b"X-Edgemesh-Error: draining" in transport.value()
    assert b"drain deadline (3s)" in transport.value()


def test_a_second_stop_signal_ends_the_drain_at_once(
        mesh: Mesh, reactor: MemoryReactorClock) -> None:
    import signal

    from edgemesh.roles._resilience import second_signal_cuts_the_drain

    edge = mesh.edge("edge-1", resilience=Resilience(drain_timeout=30.0))
    mesh.connect()
    client, transport = http_client(edge.listeners["proxy"].factory)
    client.dataReceived(GET_WEB)
    mesh.pod(("10.1.0.1", 8080))  # never answers
    triggers: list[Any] = []
    calls: list[Any] = []

    class Reactor:
        def addSystemEventTrigger(self, phase: str, event: str, f: Any) -> None:
            triggers.append((phase, event, f))

        def callFromThread(self, f: Any, *args: Any) -> None:
            calls.append((f, args))

    second_signal_cuts_the_drain(Reactor(), edge)
    [(phase, event, install)] = triggers
    assert (phase, event) == ("before", "shutdown")
    saved = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        install()  # twistd's shutdown begins: the first signal was Twisted's to take
        stopped = edge.stopService()
        assert stopped is not None
        handler = signal.getsignal(signal.SIGTERM)
        assert callable(handler) and handler is signal.getsignal(signal.SIGINT)
        handler(signal.SIGTERM, None)  # the second: only asks the reactor thread
        [(cut, args)] = calls
        assert transport.value() == b""
        cut(*args)
    finally:
        for number, previous in saved.items():
            signal.signal(number, previous)
    assert transport.value().startswith(b"HTTP/1.1 503 "), transport.value()
    assert b"asked twice to stop" in transport.value()
    reactor.advance(0)
    assert not edge.running and edge.cut_drain is None


def test_stop_with_nothing_in_progress_is_immediate(mesh: Mesh) -> None:
    edge = mesh.edge("edge-1")
    mesh.connect()
    stopped = edge.stopService()
    assert stopped is not None and stopped.called
    router_stopped = mesh.router.stopService()
    assert router_stopped is not None and router_stopped.called


def test_a_draining_edge_refuses_new_streams_and_peers_route_around(
    mesh: Mesh, reactor: MemoryReactorClock
) -> None:
    edge = mesh.edge("edge-1")
    mesh.connect()
    client, _ = http_client(edge.listeners["proxy"].factory)
    client.dataReceived(GET_WEB)
    mesh.pod(("10.1.0.1", 8080))
    edge.stopService()
    mesh.flush()
    # The router was told; an exchange for edge-1's pod (its only endpoint) still goes
    # there, and edge-1 refuses it: 503 draining.
    cloud, transport = http_client(mesh.router.listeners["http"].factory)
    cloud.dataReceived(GET_WEB)
    mesh.flush()
    assert transport.value().startswith(b"HTTP/1.1 503 ")
    assert b"X-Edgemesh-Error: draining" in transport.value()


# --- cancellation across a link ------------------------------------------------------------


def test_a_timeout_at_the_origin_cancels_the_pod_connection_beyond_the_link(
    mesh: Mesh, reactor: MemoryReactorClock
) -> None:
    mesh.router.pipeline.configure(Resilience(request_timeout=1.0))
    mesh.edge("edge-1")
    mesh.connect()
    cloud, transport = http_client(mesh.router.listeners["http"].factory)
    cloud.dataReceived(GET_WEB)
    mesh.flush()
    _, pod_transport = mesh.pod(("10.1.0.1", 8080))
    assert pod_transport.value().startswith(b"GET /hello ")
    reactor.advance(1.1)
    mesh.flush()
    assert transport.value().startswith(b"HTTP/1.1 504 ")
    assert pod_transport.disconnecting, "the edge aborted its pod connection on the RESET"


# --- relay -----------------------------------------------------------------------------------


def test_relay_through_the_router_when_the_hub_cannot_be_dialled(
    mesh: Mesh, reactor: MemoryReactorClock
) -> None:
    edge1 = mesh.edge("edge-1", hub=None)
    mesh.connect()
    edge2 = mesh.edge("edge-2", hub="tcp:7702")  # the catalog says 127.0.0.2:7701
    mesh.connect()
    client, transport = http_client(edge1.listeners["proxy"].factory)
    client.dataReceived(b"GET /api HTTP/1.1\r\nHost: api\r\n\r\n")
    ConnectionCompleter(reactor).failOnce(Failure(ConnectionRefusedError()))  # the hub dial
    mesh.flush()
    pod, pod_transport = mesh.pod(("10.2.0.1", 9090))  # through the router and edge-2's tunnel
    pod.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    mesh.flush()
    assert transport.value().startswith(b"HTTP/1.1 200 OK\r\n"), transport.value()
    view: Any = edge1.pipeline.resilience_view()
    assert view["peers"] == {"edge-2": "relayed"} and view["relayed"] == {"edge-2": 1}

    # Direct again once the dialler reaches the hub (its background retry).
    reactor.advance(1.5)  # ClientService's first retry: 0.3 s plus up to 1 s of jitter
    mesh.join(("127.0.0.2", 7701), edge2.listeners["hub"].factory)
    assert edge1.pipeline.resilience_view()["peers"] == {"edge-2": "direct"}
    client, transport = http_client(edge1.listeners["proxy"].factory)
    client.dataReceived(b"GET /api HTTP/1.1\r\nHost: api\r\n\r\n")
    mesh.flush()
    assert pod_transport.value().count(b"GET /api ") == 2  # edge-2's pooled pod connection
    pod.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    mesh.flush()
    assert transport.value().startswith(b"HTTP/1.1 200 OK\r\n")
    assert edge1.pipeline.resilience_view()["relayed"] == {"edge-2": 1}, "not relayed again"


# --- unsent failures -----------------------------------------------------------------------


class Recording:
    def __init__(self) -> None:
        self.errors: list[MeshError] = []

    def head(self, head: ResponseHead) -> None:
        raise AssertionError("no head expected")

    def write(self, data: bytes) -> None:
        raise AssertionError("no body expected")

    def end(self) -> None:
        raise AssertionError("no end expected")

    def fail(self, error: MeshError) -> None:
        self.errors.append(error)

    def setProducer(self, producer: Any) -> None:
        pass


def test_connect_failures_are_unsent(reactor: MemoryReactorClock) -> None:
    target = HTTPUpstreamTarget(reactor, TargetKind.service_bus)
    port = ServicePort("http", 80, 8080)
    endpoint = Endpoint("10.1.0.1", 8080, "edge-1")
    service = Service("shop", "web", None, (port,), {"http": (endpoint,)})
    responder = Recording()
    head = RequestHead(b"POST", b"/", b"web", (), 3, "")
    route = Route(TargetKind.service_bus, service, port, endpoint, timeout=7.0)
    body = target.open(route, head, responder)  # type: ignore[arg-type]
    body.write(b"abc")
    body.end()  # the request timeout runs from the end of the request body
    assert [round(c.getTime() - reactor.seconds(), 3) for c in reactor.getDelayedCalls()] == [7.0]
    ConnectionCompleter(reactor).failOnce(Failure(ConnectionRefusedError()))
    [error] = responder.errors
    assert error.reason is Reason.upstream_refused and error.unsent


def test_pipeline_uses_the_service_timeout_at_the_pod(mesh: Mesh, reactor: MemoryReactorClock,
                                                    tmp_path: Path) -> None:
    catalog = make_catalog()
    web = catalog.services["default/web"]
    timed = Service(web.namespace, web.name, web.cluster_ip, web.ports, web.endpoints,
                    {"edgemesh.io/timeout": "750ms"})
    catalog = type(catalog)([timed, *(s for k, s in catalog.services.items() if k != web.key)],
                            catalog.nodes, revision=1)
    edge: EdgeNode = build_edge(reactor, edge_config(tmp_path / "solo", router=None, hub=None,
                                                    catalog=catalog))
    start(edge)
    client, transport = http_client(edge.listeners["proxy"].factory)
    client.dataReceived(GET_WEB)
    reactor.advance(0.8)
    assert transport.value().startswith(b"HTTP/1.1 504 ")
    assert b"0.75s" in transport.value()


# --- options -------------------------------------------------------------------------------


@pytest.mark.parametrize("tap", [edge_tap, router_tap])
def test_options(tap: Any, tmp_path: Path) -> None:
    options = tap.Options()
    base = (["--node", "edge-1", "--state-dir", str(tmp_path)] if tap is edge_tap
            else ["--catalog", str(write_catalog(tmp_path))])
    options.parseOptions([*base, "--insecure", "--retries", "2", "--retry-budget", "25%",
                          "--max-requests-per-service", "50", "--outlier-failures", "3",
                          "--ejection-time", "5", "--max-ejection-percent", "20",
                          "--heartbeat-interval", "1", "--heartbeat-timeout", "4",
                          "--drain-timeout", "3", "--stream-idle-timeout", "60",
                          "--request-timeout", "9"])
    settings = options.resilience()
    assert settings == Resilience(
        request_timeout=9.0, stream_idle_timeout=60.0, retries=2, retry_budget_ratio=0.25,
        max_requests_per_service=50, consecutive_failures=3, base_ejection=5.0,
        max_ejection_percent=20, heartbeat_interval=1.0, heartbeat_timeout=4.0, drain_timeout=3.0,
    )
    defaults = tap.Options()
    defaults.parseOptions([*base, "--insecure"])
    assert defaults.resilience() == Resilience()


def write_catalog(directory: Path) -> Path:
    path = directory / "catalog.yaml"
    path.write_text('{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "edge-1"}}\n')
    return path


@pytest.mark.parametrize("bad", [["--retries", "11"], ["--retry-budget", "150%"],
                                 ["--max-requests-per-service", "0"], ["--drain-timeout", "0"]])
def test_bad_options(bad: list[str], tmp_path: Path) -> None:
    from twisted.python.usage import UsageError

    with pytest.raises(UsageError):
        options: Any = edge_tap.Options()  # type: ignore[no-untyped-call]
        options.parseOptions(["--node", "e", "--state-dir", str(tmp_path), "--insecure", *bad])


def test_heartbeat_settings_reach_the_links(mesh: Mesh, reactor: MemoryReactorClock) -> None:
    edge = mesh.edge("edge-1", resilience=Resilience(heartbeat_interval=1.0, heartbeat_timeout=3.0))
    mesh.connect()
    link = edge.links["router"]
    assert (link.heartbeat_interval, link.heartbeat_timeout) == (1.0, 3.0)
    router_link = mesh.router.links["edge-1"]
    assert (router_link.heartbeat_interval, router_link.heartbeat_timeout) == (2.0, 6.0)
