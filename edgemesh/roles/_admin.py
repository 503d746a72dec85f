"""The admin API: a small JSON web site on its own (loopback by default) listener.

Every page is a GET; JSON pages answer ``application/json``:

- ``/healthz``: ``{"status": "ok"}`` (200) while the node serves, ``{"status": "starting"}``
  (503) before it started and after it stopped.  For liveness probes.
- ``/readyz``: ``{"ready": bool, "checks": {name: bool}, "detail": {name: text}}``, 200 when
  ready, else 503 with ``"reason"``: every failing check and why, on one line.  Checks:
  ``started``, ``listeners`` (every listener bound), ``catalog`` (router: the catalog source
  listed once; edge: a catalog from the store, ``--catalog`` or the router) and every gate
  set on ``node.observer.readiness`` (e.g. the Kubernetes watch).
  For readiness probes.
- ``/catalog``: the catalog in use, in its wire form (``catalog_to_wire``).
- ``/status``: role, node, serving, catalog revision, link names and the pipeline.
- ``/resilience``: service policies and invalid annotations, ejected endpoints, per-service
  counters (active, requests, retries, retries_denied, overloaded, timeouts), draining
  peers, and how other edges' hubs are reached (``direct``/``relayed``/``connecting``).
- ``/edges`` (router only): every edge with a tunnel to a router replica: ``node``,
  ``replica`` (the replica that holds its tunnel), ``local`` (that is this replica); for
  local ones also ``connected_since``, ``connected_for``, ``acked_revision``, ``lag``
  (revisions behind), ``rtt``.  Router ``/readyz`` also says ``leader`` (this replica
  holds the Lease; null without an election) and ``routers`` (``peers``: router links up,
  ``linked``, ``configured``, ``edges_elsewhere``, ``forwarded_out``, ``forwarded_in``).
- ``/peers``: the links to other nodes: ``peer``, ``link`` (``tunnel``, ``hub-out``,
  ``hub-in``), ``mode`` (``direct``, or ``relayed`` for an edge's tunnel: the router forwards
  what goes over it), ``connected``, ``connected_since``, ``connected_for``,
  ``disconnected_at``, ``last_reason``, ``reconnects``, ``rtt`` (seconds, last heartbeat),
  ``streams`` (exchanges open on the link).  Every link, sorted by (``peer``, ``link``);
  ``?limit=N`` answers pages of N (1 to 10000; no limit: everything), with the token for the
  next page in ``X-Edgemesh-Continue`` (and a ``Link: <...>; rel="next"`` header) until the
  last one; ``?continue=TOKEN&limit=N`` gets it.  ``X-Edgemesh-Total`` is the count of links.
- ``/config``: the effective configuration (RouterConfig or EdgeConfig) plus ``role``; file
  paths only, never key material.
- ``/metrics``: Prometheus exposition (OpenMetrics when the scraper asks for it).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from ..catalog import catalog_to_wire
from ..observability import MeshCollector, config_to_json, exposition, node_registry
from ..transports import spliced_bytes

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from ._node import MeshNode

LOOPBACK = "127.0.0.1"


def admin_endpoint(description: str) -> str:
    """The admin listener's endpoint string: a TCP port without an interface listens on
    loopback only (``tcp:7790`` → ``tcp:7790:interface=127.0.0.1``; a bare ``7790`` too)."""
    text = description.strip()
    if text.isdigit():
        return f"tcp:{text}:interface={LOOPBACK}"
    kind, colon, rest = text.partition(":")
    if colon and kind.lower() in ("tcp", "tcp6") and "interface=" not in rest:
        loopback = LOOPBACK if kind.lower() == "tcp" else "\\:\\:1"
        return f"{text}:interface={loopback}"
    return text


class _JSON(Resource):
    isLeaf = True

    def __init__(self, produce: Callable[[], tuple[int, object]]) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.produce = produce

    def render_GET(self, request: Request) -> bytes:
        status, body = self.produce()
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(body, indent=1, sort_keys=True, default=str).encode() + b"\n"


MAX_PAGE = 10000
"""The largest ``limit`` of a /peers page."""


def _continue_token(key: tuple[str, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode("ascii").rstrip("=")


def _continue_key(token: str) -> tuple[str, str]:
    """The (peer, link) a token continues after; ValueError for anything else."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        key = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError("continue: not a token of this API") from error
    if not (isinstance(key, list) and len(key) == 2 and all(isinstance(k, str) for k in key)):
        raise ValueError("continue: not a token of this API")
    return key[0], key[1]


class _Peers(Resource):
    """``/peers``, whole or in pages (see the module docstring)."""

    isLeaf = True

    def __init__(self, node: MeshNode) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.node = node

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")
        args = request.args or {}
        try:
            limit = after = None
            if b"limit" in args:
                text = args[b"limit"][0].decode("ascii", "replace")
                if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE:
                    raise ValueError(f"limit: an integer from 1 to {MAX_PAGE}, got {text[:20]!r}")
                limit = int(text)
            if b"continue" in args:
                after = _continue_key(args[b"continue"][0].decode("ascii", "replace"))
        except ValueError as error:
            request.setResponseCode(400)
            request.setHeader(b"X-Edgemesh-Error", b"bad-request")
            return json.dumps({"error": str(error)}).encode() + b"\n"
        observer = self.node.observer
        rows, more = observer.peers_page(limit, after)
        request.setHeader(b"X-Edgemesh-Total", str(len(observer.peers)).encode("ascii"))
        if more is not None:
            token = _continue_token(more)
            request.setHeader(b"X-Edgemesh-Continue", token.encode("ascii"))
            request.setHeader(
                b"Link", f'</peers?limit={limit}&continue={token}>; rel="next"'.encode("ascii"))
        return json.dumps(rows, indent=1, sort_keys=True, default=str).encode() + b"\n"


class _Metrics(Resource):
    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:
        accept = request.getHeader(b"accept")
        body, content_type = exposition(self.registry, accept.decode("latin-1") if accept else None)
        request.setHeader(b"Content-Type", content_type.encode("ascii"))
        return body


def readiness(node: MeshNode) -> tuple[bool, dict[str, bool], dict[str, str]]:
    """(ready, checks, detail) as ``/readyz`` shows them."""
    catalog = node.catalog
    if hasattr(node, "catalog_pending"):
        loaded = not node.catalog_pending
        why = "waiting for the catalog source to list"
    else:
        loaded = catalog.revision > 0 or bool(catalog.services) or bool(catalog.nodes)
        unusable = getattr(node, "store_problems", ())
        stored = f"none usable stored: {'; '.join(unusable)}" if unusable else "none stored"
        why = f"no catalog yet ({stored}, none given, none pushed)"
    down = sorted(name for name, listener in node.listeners.items() if listener.port is None)
    checks = {"started": node.serving, "listeners": not down, "catalog": loaded}
    detail: dict[str, str] = {}
    if not node.serving:
        detail["started"] = "not serving (starting or stopping)"
    if down:
        detail["listeners"] = "not listening: " + ", ".join(down)
    if not loaded:
        detail["catalog"] = why
    follower = getattr(node, "follower", None)
    if follower is not None and follower.unsaved is not None:
        # Ready (the catalog in use is right), but a restart now would serve an older one.
        detail["catalog_store"] = follower.unsaved
    for name, (ready, text) in sorted(node.observer.readiness.gates.items()):
        checks[name] = ready
        if text:
            detail[name] = text
    return all(checks.values()), checks, detail


def replica_view(node: MeshNode) -> dict[str, object]:
    """Router replicas: ``leader`` (this replica holds the controller's Lease; None without
    an election) and ``routers`` (the other replicas it has a link to, forwarded counts)."""
    parts = node.status_parts
    if "routers" not in parts:
        return {}
    leader = parts["leader"]() if "leader" in parts else None
    return {
        "leader": leader.get("leader") if isinstance(leader, dict) else None,
        "leader_transitions": leader.get("transitions") if isinstance(leader, dict) else None,
        "routers": parts["routers"](),
    }


class _AdminChannel(HTTPChannel):
    """An admin connection whose request head must be whole within ``head_timeout`` of its
    first byte (the nodes' --header-timeout).  twisted.web's own timer is an idle one that
    starts over at every byte: one byte every 50 s held a connection for ever (slowloris).
    HTTP/1.1 only (no HTTP/2 negotiation: the admin API is probes, curl and Prometheus)."""

    head_timeout = 10.0
    _head_deadline: IDelayedCall | None = None

    def dataReceived(self, data: bytes) -> None:
        if self._head_deadline is None:
            self._head_deadline = self.callLater(  # type: ignore[no-untyped-call]
                self.head_timeout, self._head_too_slow)
        super().dataReceived(data)  # type: ignore[no-untyped-call]

    def allHeadersReceived(self) -> None:
        self._head_done()
        super().allHeadersReceived()  # type: ignore[no-untyped-call]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._head_done()
        super().connectionLost(reason)  # type: ignore[no-untyped-call]

    def _head_done(self) -> None:
        deadline, self._head_deadline = self._head_deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()


class _Root(Resource):
    """The admin API's root: a page it does not have is a JSON 404 that lists the pages (as
    every page but /metrics answers JSON), not twisted.web's HTML one."""

    def getChild(self, path: bytes, request: Request) -> Resource:
        pages = sorted("/" + name.decode() for name in self.children)
        shown = "/" + path.decode("utf-8", "replace")
        return _JSON(lambda: (404, {"error": f"no page {shown} on this node", "pages": pages}))


def admin_site(node: MeshNode) -> Site:
    root = _Root()  # type: ignore[no-untyped-call]

    def healthz() -> tuple[int, object]:
        return (200 if node.serving else 503), {"status": "ok" if node.serving else "starting"}

    def readyz() -> tuple[int, object]:
        ready, checks, detail = readiness(node)
        body: dict[str, object] = {"ready": ready, "checks": checks, "detail": detail}
        if not ready:
            # One line for a probe's event or a curl: every failing check and why.
            body["reason"] = "; ".join(
                f"{name}: {detail.get(name, 'not ready')}" for name, ok in checks.items()
                if not ok)
        body.update(replica_view(node))
        return (200 if ready else 503), body

    def catalog() -> tuple[int, object]:
        return 200, catalog_to_wire(node.catalog)

    def status() -> tuple[int, object]:
        return 200, {**node.status(), "pipeline": node.pipeline.describe()}

    def config() -> tuple[int, object]:
        settings: Any = getattr(node, "config", None)
        shown = config_to_json(settings)
        return 200, {"role": node.role.value, **(shown if isinstance(shown, dict) else {})}

    root.putChild(b"healthz", _JSON(healthz))
    root.putChild(b"readyz", _JSON(readyz))
    root.putChild(b"catalog", _JSON(catalog))
    root.putChild(b"status", _JSON(status))
    root.putChild(b"resilience", _JSON(lambda: (200, node.pipeline.resilience_view())))
    root.putChild(b"peers", _Peers(node))
    root.putChild(b"config", _JSON(config))
    edges = getattr(node, "edges_view", None)
    every_edge = getattr(node, "all_edges_view", None)
    if every_edge is not None:
        root.putChild(b"edges", _JSON(lambda: (200, every_edge())))
    collector = MeshCollector(node.observer, lambda: node.catalog, edges,
                              replicas=(lambda: replica_view(node)) if every_edge else None,
                              spliced=spliced_bytes,
                              heap=node.heap.counters if node.heap is not None else None)
    root.putChild(b"metrics", _Metrics(node_registry(collector)))
    site = Site(root, reactor=node.reactor)
    front = getattr(getattr(node, "config", None), "front", None)
    head_timeout = front.header_timeout if front is not None else _AdminChannel.head_timeout

    def channel() -> _AdminChannel:
        made = _AdminChannel()  # type: ignore[no-untyped-call]
        made.head_timeout = head_timeout
        return made

    site.protocol = channel  # type: ignore[assignment]
    site.noisy = False
    site.log = lambda request: None  # type: ignore[method-assign]
    return site
