"""
Byte streams on the Twisted side: links, the CONNECT way in, the stream targets
(issue 12).  Deterministic: MemoryReactorClock and StringTransport.
"""

from __future__ import annotations

from typing import Any

from test_fuzz_links import Handler
from twisted.internet.testing import MemoryReactorClock, StringTransport

from edgemesh.transports import EnvelopeLink
from edgemesh.wire import Connection, FrameDecoder, Limits, Reset, StreamOpen


def test_a_link_without_a_stream_handler_refuses_byte_streams() -> None:
    """The stream is reset with not-implemented; the link and its HTTP exchanges go on."""
    clock = MemoryReactorClock()
    link = EnvelopeLink(clock, Handler(True), node="router", role="router", client=False)
    transport = StringTransport()
    protocol: Any = link
    protocol.makeConnection(transport)
    clock.advance(0)
    peer = Connection(client=True)
    peer.receive(transport.value())
    transport.clear()
    sid = peer.open_stream(byte_stream=True)
    link.dataReceived(peer.hello("edge-1", "edge")
                      + peer.send_stream_open(sid, "", "ns/s", 7, None, b"x", False))
    clock.advance(0)
    frames = [f for f in FrameDecoder(Limits()).feed(transport.value()) if not isinstance(f, StreamOpen)]
    assert Reset(sid, "not-implemented", "router takes no byte streams") in frames
    assert not link.closed
