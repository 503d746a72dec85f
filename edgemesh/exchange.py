"""
The contract every layer shares: one HTTP exchange flowing from a Source to a Target.

An *exchange* is one HTTP request and its response.  Heads are small and travel
whole; bodies are streams with push-producer flow control in both directions:

    source ──open(route, head, responder)──► target      returns an IRequestBody
    source ──IRequestBody.write/end/abort──► target      (target pauses the source's producer)
    source ◄──IResponder.head/write/end/fail── target     (source pauses the target's producer)

A responder may also take a whole response in one call: ``complete(head, body)``
(ICompletingResponder, optional).  Whoever holds a whole response looks the method up with
``COMPLETERS[type(responder)]`` (learnt once per class) and falls back to head, write, end.

A request body may take a head with ``content_length == 0`` as the whole request
(IHeadEndedBody, looked up with ``HEAD_ENDED``): a source then leaves out its ``end`` (and
gives no producer: a bodiless request has no flow to pause).  Any other body gets its end.

Trailers (the fields after a chunked body) go through an optional method that an
IRequestBody or IResponder may offer: ``trailers(fields: Headers)``, called at most once,
just before ``end()``.  Whoever holds trailers for a party without it drops them and logs
it (``hand_trailers`` below); so does a hop whose framing cannot carry them (a body with a
Content-Length, an HTTP/1.0 client, a link peer that did not offer them in its hello).

Nothing here touches a reactor or a socket.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import Attribute, Interface
from zope.interface.interface import InterfaceClass

Headers = tuple[tuple[bytes, bytes], ...]
"""End-to-end header fields in their original order and case; never hop-by-hop ones."""

HOPS_HEADER = b"X-Edgemesh-Hops"
"""An exchange's hop count on plain HTTP between mesh nodes (the router's cluster-IP egress
may lead back into the mesh): read and removed by the HTTP front, never sent to pods."""


@dataclass(slots=True)
class RequestHead:
    """An HTTP request's head as the mesh carries it: end-to-end fields only, body length known or
    not.  Nothing in the mesh writes one after it is made (routing included): a link decoder
    and the HTTP front hand the same head to the exchanges that repeat it."""

    method: bytes
    path: bytes
    """The origin-form request target (``/x?y``), whatever form the client used."""
    authority: bytes
    """What the client asked for: the Host header or the authority of an absolute URI."""
    headers: Headers
    content_length: int | None
    """Body length: 0 for no body, None for a body of unknown length (chunked)."""
    client: str = ""
    """The original client's IP address (for logs and source-ip affinity)."""
    hops: int = 0
    """Pipelines this exchange went through before this node (a loop guard), as received:
    carried in the envelope between nodes and as ``X-Edgemesh-Hops`` to a cluster IP; never
    to pods.  This node's pipeline checks it and never writes it: a target that forwards
    sends ``hops + 1`` (see ITarget)."""


@dataclass(slots=True)
class ResponseHead:
    """An HTTP response's head as the mesh carries it: status, reason and end-to-end fields."""

    status: int
    reason: bytes
    headers: Headers
    content_length: int | None
    """Body length as the origin framed it, or None for a body of unknown length."""


class Reason(enum.Enum):
    """Why the mesh, not the application, answered.  The value is the
    ``X-Edgemesh-Error`` header; the status is what the client sees."""

    bad_request = ("bad-request", 400)
    client_timeout = ("client-timeout", 408)
    """The client stopped sending its request body (the target was ready for more)."""
    unknown_service = ("unknown-service", 404)
    forbidden_route = ("forbidden-route", 403)
    payload_too_large = ("payload-too-large", 413)
    headers_too_large = ("headers-too-large", 431)
    not_implemented = ("not-implemented", 501)
    upstream_refused = ("upstream-refused", 502)
    upstream_lost = ("upstream-lost", 502)
    upstream_bad_response = ("upstream-bad-response", 502)
    peer_unavailable = ("peer-unavailable", 502)
    no_endpoint = ("no-endpoint", 503)
    overloaded = ("overloaded", 503)
    draining = ("draining", 503)
    upstream_timeout = ("upstream-timeout", 504)
    loop = ("loop", 508)

    __hash__ = object.__hash__  # members are singletons; Enum's own hash is Python code

    def __init__(self, code: str, status: int) -> None:
        self.code = code
        self.status = status

    @classmethod
    def from_code(cls, code: str) -> Reason:
        for member in cls:
            if member.code == code:
                return member
        return cls.upstream_lost


class MeshError(Exception):
    """An exchange failed inside the mesh: carries the reason and a one-line detail
    (plain text; whoever renders it must escape it for the medium)."""

    def __init__(self, reason: Reason, detail: str, *, unsent: bool = False) -> None:
        super().__init__(f"{reason.code}: {detail}")
        self.reason = reason
        self.detail = detail
        self.unsent = unsent
        """Nothing of the request left this node (e.g. the connection was refused): the
        exchange may be retried elsewhere whatever its method."""

    @property
    def status(self) -> int:
        return self.reason.status


class Role(enum.Enum):
    """Which role a node plays: the cloud router or an edge agent."""

    router = "router"
    edge = "edge"

    __hash__ = object.__hash__  # members are singletons; Enum's own hash is Python code


class SourceKind(enum.Enum):
    """Where an exchange entered this node."""

    service_bus = "service-bus"
    """Edge: local apps (HTTP_PROXY, Host header, transparent capture)."""
    router = "router"
    """Router: cloud apps on the router's HTTP listener."""
    hub = "hub"
    """Edge: another edge's hub connection."""
    tunnel = "tunnel"
    """Edge: the router over the tunnel; router: an edge over its tunnel."""
    router_link = "router-link"
    """Router: another router replica, forwarding an exchange for an edge whose tunnel is
    here (never forwarded again)."""

    __hash__ = object.__hash__  # members are singletons; Enum's own hash is Python code


class TargetKind(enum.Enum):
    """Where an exchange leaves this node."""

    service_bus = "service-bus"
    """Edge: a pod on this node, directly."""
    hub = "hub"
    """Edge: another edge's hub."""
    tunnel = "tunnel"
    """Edge: up to the router; router: down to an edge."""
    router_link = "router-link"
    """Router: another router replica, the one that holds the edge's tunnel."""
    cluster_ip = "cluster-ip"
    """Router: a cloud service's clusterIP:port."""

    __hash__ = object.__hash__  # members are singletons; Enum's own hash is Python code


class IRequestBody(Interface):
    """The request direction of an exchange, as the target receives it."""

    def write(data: bytes) -> None:
        """A piece of the request body (never empty)."""

    def end() -> None:
        """The request body is complete."""

    def abort(reason: str) -> None:
        """The source gave up (client gone): release everything, send nothing more."""

    def setProducer(producer: IPushProducer) -> None:
        """The source's flow: the target pauses it while it cannot take more body."""


class IHeadEndedBody(IRequestBody):
    """An IRequestBody that takes a head with ``content_length == 0`` as the whole request
    (optional: looked up with ``HEAD_ENDED``): for such a head its ``end`` and
    ``setProducer`` do nothing, so a source may leave them out (a GET: one Python call
    less per exchange and hop)."""


class IResponder(Interface):
    """The response direction of an exchange, implemented by the source."""

    def head(head: ResponseHead) -> None:
        """The response head; called at most once, before any body."""

    def write(data: bytes) -> None:
        """A piece of the response body (never empty)."""

    def end() -> None:
        """The response is complete."""

    def fail(error: MeshError) -> None:
        """The exchange failed: before the head, the source answers with the error;
        after it, the source aborts the client connection (the response is truncated)."""

    def setProducer(producer: IPushProducer) -> None:
        """The target's response flow: the source pauses it while the client is slow."""


class ICompletingResponder(IResponder):
    """An IResponder that also takes a whole response in one call (optional: a target
    checks for it with ``COMPLETERS``, never assumes it)."""

    def complete(head: ResponseHead, body: bytes) -> None:
        """The whole response at once: head, the body bytes (possibly empty), end.  The
        same as ``head(head)``, ``write(body)`` if any, ``end()``, and the same rules."""


_Method = TypeVar("_Method")


class _MethodsByClass(dict[type, _Method | None]):
    """A class's unbound method ``name``, or None where the class does not declare
    ``interface`` (``@implementer``; a declaration on the instance alone does not count).
    Learnt once per class (so bounded by the program's classes): the check on the hot path
    is one dict lookup (``bench/complete_probe.py`` measures it against the ``getattr``
    probe).  The optional methods below (COMPLETERS, VIEW_WRITERS, PIPE_WRITERS,
    READ_LIMITERS) are looked up so."""

    def __init__(self, interface: InterfaceClass, name: str) -> None:
        super().__init__()
        self.interface = interface
        self.name = name

    def __missing__(self, kind: type) -> _Method | None:
        found: _Method | None = (
            getattr(kind, self.name) if self.interface.implementedBy(kind) else None)
        self[kind] = found
        return found


Completer = Callable[[Any, ResponseHead, bytes], None]
"""A class's ``complete``, unbound: called as ``complete(responder, head, body)``."""


COMPLETERS: _MethodsByClass[Completer] = _MethodsByClass(ICompletingResponder, "complete")
"""A responder class's ``complete`` (unbound), or None where the class does not declare
ICompletingResponder (see _MethodsByClass)."""


class _HeadEnded(dict[type, bool]):
    def __missing__(self, kind: type) -> bool:
        found = self[kind] = IHeadEndedBody.implementedBy(kind)
        return found


HEAD_ENDED: _HeadEnded = _HeadEnded()
"""Whether a request body class declares IHeadEndedBody (``@implementer``), learnt once
per class like ``COMPLETERS``: one dict lookup on the hot path."""


class IViewResponder(IResponder):
    """An IResponder that also takes body pieces as they came off a link, read-only views
    of its reads among them (optional: looked up with ``VIEW_WRITERS``).  A view pins the
    whole read it shows: the responder copies whatever it keeps beyond the call."""

    def write_parts(parts: list[bytes | memoryview]) -> None:
        """The same as ``write(b"".join(parts))`` without the copy (at least one part,
        none empty)."""


PartsWriter = Callable[[Any, list[bytes | memoryview]], None]
"""A class's ``write_parts``, unbound: called as ``write_parts(responder, parts)``."""


VIEW_WRITERS: _MethodsByClass[PartsWriter] = _MethodsByClass(IViewResponder, "write_parts")
"""A responder class's ``write_parts`` (unbound), or None where the class does not declare
IViewResponder: learnt once per class, as COMPLETERS."""


def write_parts(responder: Any, parts: list[bytes | memoryview]) -> None:
    """Body pieces to a responder: as they are where its class takes them, else as one
    bytes (views must not be kept: one join, one ``write``)."""
    writer = VIEW_WRITERS[type(responder)]
    if writer is not None:
        writer(responder, parts)
    elif len(parts) == 1 and type(parts[0]) is bytes:
        responder.write(parts[0])
    else:
        responder.write(b"".join(parts))


class IBodyPipe(Interface):
    """Body bytes waiting in a pipe, moved between sockets by ``os.splice`` without
    passing through the process (transports/_io.SplicePipe)."""

    held: int

    def drain_to(fd: int, size: int) -> int:
        """Move up to ``size`` held bytes to socket ``fd``: how many it took now."""

    def take(size: int) -> bytes:
        """The next ``size`` held bytes, out of the pipe as bytes."""

    def discard() -> None:
        """Empty the pipe, whatever it holds."""


class IPipeResponder(IResponder):
    """An IResponder that also takes body bytes waiting in a pipe (optional: looked up
    with ``PIPE_WRITERS``; a target asks ``can_take_pipes`` once per response)."""

    def can_take_pipes(from_pod: bool) -> bool:
        """Whether body pieces in a pipe can go on without a copy through the process at
        all (a plain TCP link or client): asked once per response, by a pod connection
        (``from_pod``) or a link."""

    def takes_pipe_now() -> bool:
        """Whether a piece in a pipe would go on without a copy now (the link has room);
        else the target reads it as it does for ``write``."""

    def write_pipe(pipe: IBodyPipe, size: int) -> None:
        """The same as ``write(pipe.take(size))``: the next ``size`` bytes of ``pipe`` are
        body.  On return the pipe holds none of them."""


PipeWriter = Callable[[Any, Any, int], None]
"""A class's ``write_pipe``, unbound: called as ``write_pipe(responder, pipe, size)``."""


PIPE_WRITERS: _MethodsByClass[PipeWriter] = _MethodsByClass(IPipeResponder, "write_pipe")
"""A responder class's ``write_pipe`` (unbound), or None where the class does not declare
IPipeResponder: learnt once per class, as COMPLETERS."""


def can_take_pipes(responder: Any, from_pod: bool) -> bool:
    """Whether ``responder`` can take body pieces in a pipe without a copy at all."""
    return (PIPE_WRITERS[type(responder)] is not None
            and bool(responder.can_take_pipes(from_pod)))


def write_pipe(responder: Any, pipe: Any, size: int) -> None:
    """Body bytes in a pipe to a responder: as they are where its class takes them, else
    read out as bytes (one ``write``)."""
    writer = PIPE_WRITERS[type(responder)]
    if writer is not None:
        writer(responder, pipe, size)
    else:
        responder.write(pipe.take(size))


class ISizedProducer(IPushProducer):
    """An IPushProducer that also sizes its reads to what its consumer can pass on at once
    (optional: looked up with ``READ_LIMITERS``)."""

    def limit_reads(room: int) -> None:
        """The consumer passes on ``room`` more bytes now without holding any of them: the
        producer's next read takes no more than that (nor less than a floor of its own)."""


ReadLimiter = Callable[[Any, int], None]
"""A class's ``limit_reads``, unbound: called as ``limit_reads(producer, room)``."""


READ_LIMITERS: _MethodsByClass[ReadLimiter] = _MethodsByClass(ISizedProducer, "limit_reads")
"""A producer class's ``limit_reads`` (unbound), or None where the class does not declare
ISizedProducer: learnt once per class, as COMPLETERS."""


class ITarget(Interface):
    """A way out of this node."""

    kind: Any = Attribute("The TargetKind this target serves.")

    def open(route: Any, head: RequestHead, responder: IResponder) -> IRequestBody:
        """Start an exchange along ``route`` (an ``edgemesh.routing.Route``: the contract
        names no catalog type, so that it stays the lowest layer).  Never raises for network
        reasons: failures reach ``responder.fail`` (possibly before this returns).
        ``head`` may be shared with other exchanges: never write it.  A target whose
        exchange may come back into a mesh pipeline (a link, a cluster IP) sends the hop
        count ``head.hops + 1`` (this node's pass; ``head.hops`` is what was received)."""


class ISource(Interface):
    """A way into this node."""

    kind: Any = Attribute("The SourceKind of the exchanges this source starts.")
    description: Any = Attribute("Where it listens or connects, for logs and the admin API.")


_trailer_log = Logger(namespace="edgemesh.trailers")


def hand_trailers(party: object, trailers: Headers, why_not: str) -> None:
    """Give trailer fields to the next party (an IRequestBody or IResponder) if it takes
    them (the optional ``trailers`` method); else they are dropped, and logged."""
    give = getattr(party, "trailers", None)
    if give is not None:
        give(trailers)
    else:
        drop_trailers(trailers, why_not)


def drop_trailers(trailers: Headers, why: str) -> None:
    """Trailer fields that cannot go further: logged (never silently lost)."""
    _trailer_log.info(
        "dropped {count} trailer field(s) ({names}): {why}",
        count=len(trailers),
        names=", ".join(name.decode("latin-1") for name, _ in trailers[:8]),
        why=why,
    )


# --- byte streams (issue 12, docs/protocols.md) -----------------------------------------
#
# A byte stream is one TCP connection carried whole: bytes both ways, each direction
# ending on its own (half-close).  A Source opens one with IStreamTarget.open_stream and
# gets the IByteStream it writes the client's bytes to; the target answers through the
# source's IStreamSource.  Each side pauses the other's producer while it cannot take
# more, as for exchange bodies.


class IByteStream(Interface):
    """One direction of a byte stream, as the side that receives it implements it."""

    def write(data: bytes) -> None:
        """Bytes of the stream (never empty)."""

    def end() -> None:
        """No more bytes this way (the writer half-closed); the other way goes on."""

    def abort(error: MeshError) -> None:
        """The stream is over, both ways, without a clean end (refused, reset, cut by a
        timeout, the other end gone): release everything, send nothing more."""

    def setProducer(producer: IPushProducer) -> None:
        """The writer's flow: paused while this side cannot take more bytes."""


class IStreamSource(IByteStream):
    """The source's side of a byte stream (what the target answers through)."""

    def connected() -> None:
        """The far end is connected: bytes may flow back.  Called at most once, before
        any ``write``; a stream refused before this gets ``abort`` alone."""


class IStreamTarget(Interface):
    """A way out of this node for byte streams."""

    kind: Any = Attribute("The TargetKind this target serves.")

    def open_stream(route: Any, client: str, source: IStreamSource) -> IByteStream:
        """Start a byte stream to ``route``; ``client`` is the original client's address.
        Never raises for network reasons: failures reach ``source.abort``."""
