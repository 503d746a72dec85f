"""
The transparent listener: connections the capture rules REDIRECTed here, served by the
ordinary HTTP front with one difference, how the service is found.

The *original destination* (SO_ORIGINAL_DST: the ``clusterIP:port`` or virtual IP the app
connected to) decides the service and port, not the Host header: that is what the app's
resolver and the kernel agreed on, it is right for short names resolved through a pod's
search path (``http://cart/`` from namespace ``shop`` is ``shop/cart``, which Host alone
would read as ``default/cart``), and for apps that send a Host of their own (virtual
hosting).  The Host header still travels to the pod unchanged; only a request without one
(HTTP/1.0) gets the original destination as its authority.

A captured connection to a *stream* port (catalog/_protocols.py: ``appProtocol`` or the
port name says it is not HTTP/1.x) is carried as a byte stream from its first byte
(docs/protocols.md), when the node gives this listener a way to open streams: nothing is
parsed, and a refusal closes the connection with one log line naming the reason.

Refused, each with a clear answer and one log line:
- a first byte that cannot start an HTTP/1.x request (TLS, a database protocol): 501;
- a connection that was not redirected (its original destination is this listener, or
  the kernel has none): 403 -- this port serves captured traffic only, so that binding it
  beyond loopback (needed for PREROUTING) does not open a proxy to the whole mesh.
Server-speaks-first protocols send nothing; the front's idle timeout closes those.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IAddress, IReactorTime

from ..catalog import PortKind
from ..exchange import (
    IByteStream,
    IRequestBody,
    IResponder,
    IStreamSource,
    MeshError,
    Reason,
    RequestHead,
    SourceKind,
)
from ..transports import FrontLimits, HookedFrontFactory, HookedFrontProtocol
from ._sockopt import original_destination
from ._vips import ServiceAddresses

OriginalDestination = Callable[[Any], "tuple[str, int] | None"]
"""The transport of an accepted connection → its original (host, port), or None."""

DispatchResolved = Callable[
    [SourceKind, RequestHead, IResponder, str, int, "tuple[str, int] | None"], IRequestBody
]
"""``Pipeline.dispatch_resolved``."""

DispatchStreamResolved = Callable[
    [SourceKind, str, int, "tuple[str, int] | None", str, IStreamSource], IByteStream
]
"""``Pipeline.dispatch_stream_resolved``."""

_REQUEST_START = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ\r\n")
"""What the first byte of an HTTP/1.x request can be: a method (tokens in upper case for
every registered method) or the empty line a client may send before a request."""

def socket_original_destination(transport: Any) -> tuple[str, int] | None:
    """The default lookup: SO_ORIGINAL_DST on the transport's socket."""
    get_handle = getattr(transport, "getHandle", None)
    if get_handle is None:
        return None
    return original_destination(get_handle())


def describe_first_byte(byte: int) -> str:
    if byte == 0x16:
        return f"0x{byte:02x}, a TLS handshake: send http:// to the mesh, which secures the hops"
    if byte == 0x05 or byte == 0x04:
        return f"0x{byte:02x}, a SOCKS handshake"
    if 0x21 <= byte <= 0x7E:
        return f"{chr(byte)!r}"
    return f"0x{byte:02x}"


TransparentFrontProtocol = HookedFrontProtocol
"""A captured connection's protocol: the HTTP front with a ``CapturedConnection`` hook."""


class CapturedConnection:
    """One captured connection, as the HTTP front's hook: routed by the original
    destination; or a byte stream to a stream port."""

    def __init__(
        self,
        addresses: ServiceAddresses,
        dispatch_resolved: DispatchResolved,
        lookup: OriginalDestination,
        dispatch_stream: DispatchStreamResolved | None = None,
    ) -> None:
        self._dispatch_stream = dispatch_stream
        self._addresses = addresses
        self._dispatch_resolved = dispatch_resolved
        self._lookup = lookup
        self.original: tuple[str, int] | None = None
        """Where the app connected to; None: not a captured connection."""

    def connected(self, front: HookedFrontProtocol) -> None:
        transport = front.transport
        assert transport is not None
        try:
            original = self._lookup(transport)
        except Exception:  # noqa: BLE001 -- a lookup bug must cost this connection only
            front.log.failure("original destination lookup failed")
            original = None
        if original is not None:
            host: IAddress = transport.getHost()
            if (getattr(host, "host", None), getattr(host, "port", None)) == original:
                original = None  # connected to this port directly: not redirected
        self.original = original
        if original is not None and self._dispatch_stream is not None:
            self._maybe_stream(front, *original)

    def _maybe_stream(self, front: HookedFrontProtocol, host: str, port: int) -> None:
        try:
            service, service_port = self._addresses.destination(host, port)
        except MeshError:
            return  # the HTTP path refuses it as before, with its answer
        if service_port.kind is not PortKind.stream:
            return
        dispatch = self._dispatch_stream
        assert dispatch is not None
        client = front.client_address
        front.become_stream(lambda source: dispatch(
            SourceKind.service_bus, service.key, service_port.port, None, client, source
        ))

    def upgrades_as_streams(self) -> bool:
        return self._dispatch_stream is not None and self.original is not None

    def open_upgrade(self, authority: bytes, client: str, source: IStreamSource) -> IByteStream:
        assert self.original is not None and self._dispatch_stream is not None
        service, service_port = self._addresses.destination(*self.original)
        return self._dispatch_stream(
            SourceKind.service_bus, service.key, service_port.port, None, client, source,
        )

    def open_connect(self, authority: bytes, client: str, source: IStreamSource) -> IByteStream:
        raise MeshError(Reason.forbidden_route,
                        "CONNECT is for the service bus proxy, not the capture listener")

    def first_bytes(self, front: HookedFrontProtocol, data: bytes) -> bool:
        if data[0] not in _REQUEST_START:
            front.refuse(
                Reason.not_implemented,
                f"not HTTP: captured connection to {self._where()} starts with "
                f"{describe_first_byte(data[0])}; the mesh carries HTTP/1.x only",
            )
            return False
        return True

    def _where(self) -> str:
        if self.original is None:
            return "this listener (not redirected)"
        host, port = self.original
        return f"{host}:{port}"

    def dispatch(
        self, source: SourceKind, head: RequestHead, responder: IResponder
    ) -> IRequestBody:
        original = self.original
        if original is None:
            raise MeshError(
                Reason.forbidden_route,
                "this port serves connections redirected by the capture rules only; "
                "send explicit requests to the service bus proxy",
            )
        host, port = original
        service, service_port = self._addresses.destination(host, port)
        if not head.authority:
            head = dataclasses.replace(head, authority=f"{host}:{port}".encode("ascii"))
        return self._dispatch_resolved(
            source, head, responder, service.key, service_port.port, None
        )


class TransparentFrontFactory(HookedFrontFactory):
    """Builds the HTTP front with a ``CapturedConnection`` hook per accepted connection."""

    def __init__(
        self,
        reactor: IReactorTime,
        addresses: ServiceAddresses,
        dispatch_resolved: DispatchResolved,
        limits: FrontLimits | None = None,
        lookup: OriginalDestination = socket_original_destination,
        dispatch_stream: DispatchStreamResolved | None = None,
    ) -> None:
        super().__init__(reactor, SourceKind.service_bus, self._captured, limits)
        self.addresses = addresses
        self.dispatch_resolved = dispatch_resolved
        self.lookup = lookup
        self.dispatch_stream = dispatch_stream
        """``Pipeline.dispatch_stream_resolved``: stream ports are carried as byte streams
        (None: every captured connection is HTTP, as before)."""

    def _captured(self, addr: IAddress | None) -> CapturedConnection:
        return CapturedConnection(self.addresses, self.dispatch_resolved, self.lookup,
                                  self.dispatch_stream)
