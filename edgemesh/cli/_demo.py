"""
``edgemesh demo``: a router, two edge nodes and sample services on 127.0.0.1, in
one reactor, built with the public builders exactly as an embedding application
would.  Sends requests along all four paths and prints what happened.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.web.client import Agent, ProxyAgent, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from zope.interface import implementer

from ..catalog import Catalog, PortKind, catalog_from_objects
from ..roles import EdgeConfig, RouterConfig, build_edge, build_router
from ..security import TLSConfig
from ..security.certs import init_ca_dir, issue_into_dir

ROUTER_TUNNEL = 17700
ROUTER_HTTP = 17780
ROUTER_ADMIN = 17790
EDGES = {"edge-1": (17781, 17701, 17791), "edge-2": (17782, 17702, 17792)}
"""node: (proxy port, hub port, admin port)"""


def demo_catalog() -> Catalog:
    import yaml

    text = resources.files("edgemesh.cli").joinpath("demo-catalog.yaml").read_text()
    return catalog_from_objects([d for d in yaml.safe_load_all(text) if d])


class _Pod(Resource):
    """A sample service: says which pod answered."""

    isLeaf = True

    def __init__(self, pod: str, node: str) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.pod = pod
        self.node = node

    def render(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain")
        request.setHeader(b"X-Pod", self.pod.encode())
        body = request.content.read() if request.content is not None else b""
        extra = f" ({len(body)} bytes received)" if body else ""
        method = request.method.decode()
        path = request.uri.decode()
        return f"hello from {self.pod} on {self.node}: {method} {path}{extra}\n".encode()


@implementer(IHalfCloseableProtocol)
class HalfCloseEcho(Protocol):
    """The demo's TCP service: sends back everything it receives, all of it.

    A client that sends and then shuts down its writing side (``socat``, ``nc -N``) must still
    get the whole reply.  Twisted closes a protocol that is not half-close aware at once on
    read EOF, dropping what is still buffered for writing (``twisted.protocols.wire.Echo``
    does just that); here EOF means "no more input": close once the replies are flushed.
    """

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def readConnectionLost(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()  # after the write buffer is flushed

    def writeConnectionLost(self) -> None:
        # Twisted calls this only after our own loseWriteConnection, which this protocol
        # never makes; IHalfCloseableProtocol requires the method.
        pass


def start_pods(reactor: Any, catalog: Catalog) -> list[Any]:
    """Listen on every endpoint of the demo catalog (they are all on 127.0.0.1)."""
    ports = []
    seen: set[tuple[str, int]] = set()
    for service in catalog.services.values():
        kinds = {port.name: port.kind for port in service.ports}
        for port_name, endpoints in service.endpoints.items():
            for endpoint in endpoints:
                if (endpoint.host, endpoint.port) in seen:
                    continue
                seen.add((endpoint.host, endpoint.port))
                if kinds.get(port_name) is PortKind.stream:  # a TCP service: echo what comes
                    factory: Any = Factory.forProtocol(HalfCloseEcho)
                    factory.noisy = False
                else:
                    factory = Site(_Pod(endpoint.pod or service.name, endpoint.node or "?"),
                                   reactor=reactor)
                    factory.noisy = False
                    factory.log = lambda request: None
                ports.append(reactor.listenTCP(endpoint.port, factory, interface=endpoint.host))
    return ports


class _AnyHost:
    """Sends every request to one address: an app using ``Host: service``."""

    def __init__(self, reactor: Any, port: int) -> None:
        self.reactor = reactor
        self.port = port

    def endpointForURI(self, uri: Any) -> TCP4ClientEndpoint:
        return TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.port, timeout=5)


async def _wait_for(reactor: Any, what: str, check: Callable[[], bool],
                    deadline: float = 10.0) -> None:
    end = time.monotonic() + deadline
    while not check():
        if time.monotonic() > end:
            raise RuntimeError(f"timed out waiting for {what}")
        await deferLater(reactor, 0.05, lambda: None)


async def _call(agent: IAgent, method: bytes, url: str,
                body: bytes | None = None) -> tuple[int, str, str, float]:
    from io import BytesIO

    from twisted.web.client import FileBodyProducer

    started = time.perf_counter()
    producer = FileBodyProducer(BytesIO(body)) if body is not None else None
    response = await agent.request(
        method, url.encode(), Headers({b"User-Agent": [b"edgemesh-demo"]}), producer)
    text = (await readBody(response)).decode("utf-8", "replace").strip()
    elapsed = (time.perf_counter() - started) * 1000
    pod = (response.headers.getRawHeaders(b"X-Pod") or [b""])[0].decode()
    error = (response.headers.getRawHeaders(b"X-Edgemesh-Error") or [b""])[0].decode()
    return response.code, pod or (f"({error})" if error else "-"), text, elapsed


class _Tunnel(Protocol):
    """A client of a byte stream through the mesh: CONNECT, then bytes both ways (what
    ``curl -p``, gRPC's ``http_proxy`` support or ``socat PROXY:`` do)."""

    def __init__(self, authority: str, payload: bytes) -> None:
        self.authority = authority
        self.payload = payload
        self.received = b""
        self.status = 0
        self.error = ""
        self.done: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(f"CONNECT {self.authority} HTTP/1.1\r\n"
                             f"Host: {self.authority}\r\n\r\n".encode())

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.received += data
        if not self.status:
            head, found, rest = self.received.partition(b"\r\n\r\n")
            if not found:
                return
            self.status = int(head.split(b" ", 2)[1])
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"x-edgemesh-error":
                    self.error = value.strip().decode()
            self.received = rest
            if self.status != 200:
                self.transport.loseConnection()
                return
            self.transport.write(self.payload)
        if len(self.received) >= len(self.payload):
            self.transport.loseConnection()

    def connectionLost(self, reason: object = None) -> None:
        if not self.done.called:
            self.done.callback(None)


async def _stream(reactor: Any, port: int, authority: str) -> tuple[int, str, str, float]:
    """CONNECT ``authority`` through the mesh at ``port``, send bytes, expect them back."""
    started = time.perf_counter()
    payload = b"ping " * 2000  # 10 kB both ways
    tunnel = _Tunnel(authority, payload)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5), tunnel)
    await tunnel.done
    elapsed = (time.perf_counter() - started) * 1000
    if tunnel.status != 200:
        return tunnel.status, f"({tunnel.error or 'refused'})", "", elapsed
    echoed = "echoed" if tunnel.received == payload else f"{len(tunnel.received)} bytes back"
    return (200 if tunnel.received == payload else 502), f"echo-0 ({echoed})", "", elapsed


def demo_certificates(names: list[str], directory: str, router: str = "router") -> str:
    """A CA and a certificate for the router and each edge, made by ``edgemesh certs``'s own
    functions in a new ``directory`` (what ``--tls-dir`` reads; the caller removes it);
    returns it."""
    os.makedirs(directory, mode=0o700)
    init_ca_dir(directory, name="edgemesh demo CA")
    issue_into_dir(directory, router, router=True)
    for name in names:
        issue_into_dir(directory, name)
    return directory


async def run(reactor: Any, once: bool, workspace: str,
              report: Callable[[int], object] = lambda status: None) -> int:
    """Start the mesh, send the requests, print the table; `workspace` (an empty directory the
    caller removes) holds the certificates and the edges' state.  `report` gets the table's
    exit status (1 if a path failed) as soon as it is printed: without ``once`` the mesh then
    runs until the process is stopped, and the status is still the table's."""
    catalog = demo_catalog()
    pods = start_pods(reactor, catalog)
    # The tunnels and hub links use mutual TLS, as they should everywhere.
    tls_dir = demo_certificates(list(EDGES), os.path.join(workspace, "tls"))
    print(f"mTLS between nodes: CA and node certificates in {tls_dir} "
          "(removed when the demo ends)")
    router = build_router(
        reactor,
        RouterConfig(
            catalog=catalog,
            tunnel=f"tcp:{ROUTER_TUNNEL}:interface=127.0.0.1",
            http=f"tcp:{ROUTER_HTTP}:interface=127.0.0.1",
            admin=f"tcp:{ROUTER_ADMIN}:interface=127.0.0.1",
            tls=TLSConfig.from_directory(tls_dir, "router"),
        ),
    )
    router.startService()
    edges = []
    for name, (proxy, hub, admin) in EDGES.items():
        state_dir = os.path.join(workspace, f"state-{name}")
        os.makedirs(state_dir, mode=0o700)
        edge = build_edge(
            reactor,
            EdgeConfig(
                node=name,
                state_dir=state_dir,
                router=f"tcp:127.0.0.1:{ROUTER_TUNNEL}",
                proxy=f"tcp:{proxy}:interface=127.0.0.1",
                hub=f"tcp:{hub}:interface=127.0.0.1",
                admin=f"tcp:{admin}:interface=127.0.0.1",
                tls=TLSConfig.from_directory(tls_dir, name),
            ),
        )
        edge.startService()
        edges.append(edge)
    await _wait_for(
        reactor,
        "both edges to receive the catalog",
        lambda: all(router.edges.get(name) and router.edges[name].acked is not None
                    for name in EDGES),
    )

    edge1 = Agent.usingEndpointFactory(reactor, _AnyHost(reactor, EDGES["edge-1"][0]))
    as_proxy = ProxyAgent(TCP4ClientEndpoint(reactor, "127.0.0.1", EDGES["edge-1"][0]))
    cloud = Agent.usingEndpointFactory(reactor, _AnyHost(reactor, ROUTER_HTTP))
    plan: list[tuple[str, str, IAgent | int, bytes, str, bytes | None]] = [
        ("1 edge → same node", "edge-1 app", edge1, b"GET", "http://hello-edge1/resources", None),
        ("1 edge → same node", "edge-1 app (HTTP_PROXY)", as_proxy, b"GET",
         "http://hello-edge1.default/x", None),
        ("2 edge → edge", "edge-1 app", edge1, b"GET", "http://hello-edge2/resources", None),
        ("2 edge → edge", "edge-1 app", edge1, b"POST",
         "http://hello-edge2.default.svc.cluster.local/upload", b"x" * 100_000),
        ("3 edge → cloud", "edge-1 app", edge1, b"GET", "http://hello-cloud/resources", None),
        ("4 cloud → edge", "cloud app", cloud, b"GET", "http://hello-edge2/resources", None),
        ("4 cloud → edge", "cloud app", cloud, b"GET", "http://hello-edge1/resources", None),
        ("local first", "edge-1 app", edge1, b"GET", "http://hello-multi/a", None),
        ("local first", "edge-1 app", edge1, b"GET", "http://hello-multi/b", None),
        ("stream edge → edge", "edge-1 app (TCP)", EDGES["edge-1"][0], b"CONNECT", "echo:7", None),
        ("stream cloud → edge", "cloud app (TCP)", ROUTER_HTTP, b"CONNECT", "echo.default:7", None),
        ("error", "edge-1 app", edge1, b"GET", "http://no-such-service/", None),
    ]
    rows = []
    failures = 0
    for path, client, agent, method, url, body in plan:
        try:
            if isinstance(agent, int):  # a byte stream: CONNECT on that port
                status, pod, _text, ms = await _stream(reactor, agent, url)
            else:
                status, pod, _text, ms = await _call(agent, method, url, body)
        except Exception as error:  # noqa: BLE001 -- the demo reports, it does not stop
            status, pod, ms = 0, f"({type(error).__name__}: {error})", 0.0
        expected_error = path == "error"
        if (status == 200) == expected_error:
            failures += 1
        rows.append((path, client, f"{method.decode()} {url}", str(status), pod, f"{ms:.1f}"))

    headers = ("path", "client", "request", "status", "answered by", "ms")
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    print()
    for row in [headers, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)))
    print()
    if failures:
        print(f"{failures} request(s) did not behave as expected", file=sys.stderr)
    status = 1 if failures else 0
    report(status)
    if once:
        for edge in edges:
            await Deferred.fromCoroutine(_stop(edge))
        await Deferred.fromCoroutine(_stop(router))
        for port in pods:
            await port.stopListening()
        return status
    print("The mesh keeps running; try (Ctrl-C to stop):")
    print(f"  curl -s -H 'Host: hello-edge2' http://127.0.0.1:{EDGES['edge-1'][0]}/hi      "
          "# edge-1 app → edge-2 pod")
    print(f"  curl -s -x http://127.0.0.1:{EDGES['edge-1'][0]} http://hello-cloud/hi       "
          "# via HTTP_PROXY, edge → cloud")
    print(f"  curl -s -H 'Host: hello-edge1' http://127.0.0.1:{ROUTER_HTTP}/hi     "
          "# cloud app → edge-1 pod")
    print(f"  curl -s http://127.0.0.1:{ROUTER_ADMIN}/edges                      "
          "# router admin API")
    print(f"  socat - PROXY:127.0.0.1:echo:7,proxyport={EDGES['edge-1'][0]}          "
          "# TCP through the mesh")
    print(f"  curl -s http://127.0.0.1:{EDGES['edge-1'][2]}/catalog                    "
          "# edge-1's catalog")
    await Deferred()  # run until interrupted
    return status


async def _stop(service: Any) -> None:
    result = service.stopService()
    if isinstance(result, Deferred):
        await result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgemesh demo", description=__doc__)
    parser.add_argument(
        "--once", action="store_true", help="exit after the table (status 1 if a path failed)")
    args = parser.parse_args(argv)
    from twisted.internet import reactor
    from twisted.internet.task import react

    outcome: list[int] = []  # the table's status: stopped later by Ctrl-C, the demo exits with it
    # One directory for everything the demo writes (the CA key among it), removed however the
    # run ends: react() returns by SystemExit after the reactor has stopped, be it the end of
    # --once, Ctrl-C or SIGTERM (Twisted's handlers stop the reactor) or an error, so this
    # finally runs on all of them.  Only SIGKILL leaves it behind.
    workspace = tempfile.mkdtemp(prefix="edgemesh-demo-")

    async def main_coroutine(reactor: Any) -> None:
        await run(reactor, args.once, workspace, report=outcome.append)

    try:
        react(lambda r: ensureDeferred(main_coroutine(r)))
    except SystemExit as exit:
        if exit.code not in (0, None):
            return int(exit.code) if isinstance(exit.code, int) else 1
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
    del reactor
    return outcome[0] if outcome else 1
