"""
Byte streams over envelope links (issue 12): the STREAM_OPEN / STREAM_ACCEPT streams of
wire/ adapted to the stream contract, and the target that sends streams to a peer node
(another edge's hub, the tunnel).  Each direction flows with the stream's credit window
and the link's push-producer pauses, exactly as exchange bodies do (_halves._Sender and
_Receiver): a peer that stops reading pauses the other side, nothing grows without bound.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from ..exchange import (
    IByteStream,
    IStreamSource,
    IStreamTarget,
    MeshError,
    Reason,
    TargetKind,
)
from ..routing import Route
from ..wire import Data, Frame, Reset, StreamAccept, Window
from ._halves import _NO_BODY, _Receiver, _Sender
from ._peers import WaitingFlow, link_address, open_over_link

if TYPE_CHECKING:
    from ._links import EnvelopeLink



class _LinkStream(_Sender):
    """What both directions of a byte stream on a link share (it is its own sender)."""

    def __init__(self, link: EnvelopeLink, sid: int) -> None:
        self.link = link
        self.sid = sid
        self.receiver = _Receiver(link, sid)
        self.received_end = False
        self.over = False

    def _peer_side(self) -> IByteStream | None:
        raise NotImplementedError

    # IByteStream: our side's bytes, to the peer
    def write(self, data: bytes) -> None:
        if not self.over:
            self.send(data)

    def end(self) -> None:
        if not self.over:
            self.finish()
            self._release()

    def abort(self, error: MeshError) -> None:
        if self.over:
            return
        self.over = True
        self.done = True
        link = self.link
        link.write(link.connection.send_reset(self.sid, error.reason.code, error.detail))
        link.forget(self.sid)
        self.producer = None

    # IPushProducer: our side pauses the peer's bytes (no credit goes back meanwhile)
    def pauseProducing(self) -> None:
        self.receiver.pause()

    def resumeProducing(self) -> None:
        self.receiver.resume()

    def stopProducing(self) -> None:
        self.abort(MeshError(Reason.upstream_lost, "stream consumer went away"))

    # from the link
    def on_frame(self, frame: Frame) -> None:
        side = self._peer_side()
        if type(frame) is Data:
            assert isinstance(frame, Data)
            data = frame.data
            if side is not None and data:
                side.write(data if type(data) is bytes else bytes(data))  # a view of a read
                self.receiver.delivered(len(data))
            if frame.end:
                self.received_end = True
                if side is not None:
                    side.end()
                self._release()
        elif type(frame) is Reset:
            assert isinstance(frame, Reset)
            if self.over:
                return
            self.over = True
            self.done = True
            self.link.forget(self.sid)
            if side is not None:
                side.abort(MeshError(Reason.from_code(frame.code), frame.detail))
        elif type(frame) is Window:
            self.on_link_state()

    def on_link_state(self) -> None:
        self.flush()
        self._release()

    def on_lost(self, reason: str) -> None:
        if self.over:
            return
        self.over = True
        self.done = True
        side = self._peer_side()
        if side is not None:
            side.abort(MeshError(Reason.peer_unavailable,
                                 f"link to {self.link.peer_name} lost: {reason}"))

    def _release(self) -> None:
        if self.done and self.received_end and not self.over:
            self.over = True
            self.link.forget(self.sid)
            self.producer = None


@implementer(IByteStream, IPushProducer)
class OutboundStream(_LinkStream):
    """A byte stream this node opened to the peer: ``source`` is this node's side."""

    def __init__(self, link: EnvelopeLink, sid: int, source: IStreamSource) -> None:
        super().__init__(link, sid)
        self.source = source

    def _peer_side(self) -> IByteStream | None:
        return self.source

    def on_frame(self, frame: Frame) -> None:
        if type(frame) is StreamAccept:
            if not self.over:
                self.source.setProducer(self)
                self.source.connected()
            return
        super().on_frame(frame)


@implementer(IStreamSource, IPushProducer)
class InboundStream(_LinkStream):
    """A byte stream the peer opened: routed here to ``target`` (this node's way out)."""

    def __init__(self, link: EnvelopeLink, sid: int) -> None:
        super().__init__(link, sid)
        self.target: IByteStream | None = None

    def _peer_side(self) -> IByteStream | None:
        return self.target

    def connected(self) -> None:
        if not self.over:
            link = self.link
            link.write(link.connection.send_stream_accept(self.sid))

    def attach(self, target: IByteStream, data: bytes, end: bool) -> None:
        """The routed target, and what the STREAM_OPEN frame carried."""
        if self.over:
            return
        self.target = target
        target.setProducer(self)
        if data:
            target.write(data)
            self.receiver.delivered(len(data))
        if end:
            self.received_end = True
            target.end()
            self._release()


@implementer(IByteStream)
class _WaitingStream(WaitingFlow):
    """The source's side of a stream whose link is still being dialled (``WaitingFlow``:
    a bounded queue, pausing the source beyond it, replayed once the link is there)."""


REFUSED = _NO_BODY
"""The source's side of a stream refused before it left (the source was told)."""


def open_link_stream(
    link: EnvelopeLink,
    service: str,
    port: int,
    endpoint: tuple[str, int] | None,
    client: str,
    source: IStreamSource,
) -> IByteStream:
    """Open a byte stream to the peer of ``link`` (``EnvelopeLink.open_stream``)."""
    conn = link.connection
    if conn.exhausted or link.closed:
        source.abort(MeshError(Reason.peer_unavailable, f"link to {link.peer_name} is closing",
                               unsent=True))
        return REFUSED
    if not conn.peer_byte_streams:
        source.abort(MeshError(Reason.not_implemented,
                               f"{link.peer_name} runs a version without byte streams",
                               unsent=True))
        return REFUSED
    sid = conn.open_stream(byte_stream=True)
    stream = OutboundStream(link, sid, source)
    link.exchanges[sid] = stream
    link.write(conn.send_stream_open(sid, client, service, port, endpoint, b"", False))
    return stream


@implementer(IStreamTarget)
class LinkStreamTarget:
    """Sends byte streams to a peer node over its link (as LinkTarget does exchanges);
    ``dial``, when given, makes a link to a peer that has none (hubs)."""

    def __init__(
        self,
        kind: TargetKind,
        links: dict[str, EnvelopeLink],
        dial: Callable[[str], Deferred[EnvelopeLink] | None] | None = None,
    ) -> None:
        self.kind = kind
        self.links = links
        self.dial = dial

    def open_stream(self, route: Route, client: str, source: IStreamSource) -> IByteStream:
        peer, service, port, hint = link_address(route)
        opened: IByteStream | None = open_over_link(
            self.links, self.dial, peer,
            lambda link: open_link_stream(link, service, port, hint, client, source),
            _WaitingStream, source.abort)
        if opened is None:
            source.abort(MeshError(Reason.peer_unavailable, f"no link to {peer}", unsent=True))
            return REFUSED
        return opened
