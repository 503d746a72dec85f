"""
Writing without a detour through the reactor.

Twisted's ``transport.write`` only buffers: the bytes go out on the next reactor
turn, after an ``epoll_ctl`` to watch for writability and before another to stop.
For a proxy that writes one small head per request that detour is a measurable
share of the CPU, so when a plain TCP transport has nothing buffered we send at
once and hand Twisted only what the kernel did not take.  Any other transport
(TLS, UNIX, a test's StringTransport) takes the ordinary path.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp

_PLAIN_TCP = (tcp.Server, tcp.Client)


def write_now(transport: Any, data: bytes) -> None:
    """``transport.write(data)``, sending immediately when that is safe."""
    if (
        type(transport) in _PLAIN_TCP
        and not transport.TLS
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
        and not transport._tempDataLen
        and transport.offset == len(transport.dataBuffer)
    ):
        try:
            sent = transport.socket.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            # Let Twisted meet the error on its own path (it closes the connection).
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


LARGE_BUFFER = 256 * 1024
"""Read size and write-buffer threshold for connections that carry bodies in bulk
(links, pod connections): Twisted's 64 KiB default makes every 64 KiB of a large body
a separate read, frame, and pause/resume of the producers behind it."""


def use_large_buffer(transport: Any) -> None:
    if hasattr(transport, "bufferSize"):  # Twisted's FileDescriptor transports
        transport.bufferSize = LARGE_BUFFER
