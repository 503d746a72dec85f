"""
The HTTP front with a hook: what a listener adds to the front (one hook per connection)
without subclassing it.  The capture listener (capture/_transparent.py) is one: it routes
by a connection's original destination and carries stream ports as byte streams.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from twisted.internet.interfaces import IAddress, IReactorTime

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
from ._front import FrontLimits, HTTPFrontFactory
from ._streams import StreamingFrontProtocol

__all__ = ["FrontHook", "HookedFrontFactory", "HookedFrontProtocol"]


class FrontHook(Protocol):
    """What one connection of a hooked front asks its listener."""

    def connected(self, front: HookedFrontProtocol) -> None:
        """The connection is made and the front ready (``front.transport`` is set): e.g.
        make it a byte stream from its first byte (``front.become_stream``)."""

    def first_bytes(self, front: HookedFrontProtocol, data: bytes) -> bool:
        """The connection's first bytes, before they are parsed.  False: refused (the hook
        called ``front.refuse``); they are not parsed."""

    def dispatch(
        self, source: SourceKind, head: RequestHead, responder: IResponder
    ) -> IRequestBody:
        """Start an exchange (the front's Dispatch, ``source`` the listener's kind): may
        raise MeshError."""

    def open_connect(self, authority: bytes, client: str, source: IStreamSource) -> IByteStream:
        """A CONNECT as the connection's first request (may raise MeshError)."""

    def upgrades_as_streams(self) -> bool:
        """Whether an Upgrade request becomes a byte stream (else: an ordinary request)."""

    def open_upgrade(self, authority: bytes, client: str, source: IStreamSource) -> IByteStream:
        """The stream an Upgrade request opens (may raise MeshError)."""


class HookedFrontProtocol(StreamingFrontProtocol):
    """The HTTP front (with CONNECT and Upgrade as byte streams), asking ``hook`` where the
    front leaves a choice to its listener."""

    def __init__(
        self, reactor: IReactorTime, kind: SourceKind, limits: FrontLimits, hook: FrontHook
    ) -> None:
        super().__init__(reactor, kind, hook.dispatch, limits, hook.open_connect)
        self.hook = hook
        self._checked = False

    def connectionMade(self) -> None:
        super().connectionMade()
        self.hook.connected(self)

    def dataReceived(self, data: bytes) -> None:
        if self._tunnel is None and not self._checked:
            self._checked = True
            if not self.hook.first_bytes(self, data):
                return
        super().dataReceived(data)

    def upgrades_as_streams(self) -> bool:
        return self.hook.upgrades_as_streams()

    def open_upgrade(self, authority: bytes, source: IStreamSource) -> IByteStream:
        return self.hook.open_upgrade(authority, self.client_address, source)


def _no_dispatch(source: SourceKind, head: RequestHead, responder: IResponder) -> IRequestBody:
    raise MeshError(Reason.forbidden_route, "no hook for this connection")


class HookedFrontFactory(HTTPFrontFactory):
    """Builds a ``HookedFrontProtocol`` per accepted connection, with the hook
    ``hook_for(addr)`` gives it."""

    def __init__(
        self,
        reactor: IReactorTime,
        kind: SourceKind,
        hook_for: Callable[[IAddress | None], FrontHook],
        limits: FrontLimits | None = None,
    ) -> None:
        super().__init__(reactor, kind, _no_dispatch, limits or FrontLimits())
        self.hook_for = hook_for

    def buildProtocol(self, addr: IAddress | None) -> HookedFrontProtocol:
        protocol = HookedFrontProtocol(self.reactor, self.kind, self.limits, self.hook_for(addr))
        protocol.factory = self
        return protocol
