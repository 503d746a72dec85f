"""The demo's echo pod answers everything it received before it closes, also when the client
shuts down its writing side right after sending (``socat``, ``nc -N``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.testing import StringTransport

from edgemesh.cli._demo import HalfCloseEcho

REPO_ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 30.0

# The echo pod alone on 127.0.0.1, any free port, printed once listening.
SERVER = """
from twisted.internet import reactor
from twisted.internet.protocol import Factory
from edgemesh.cli._demo import HalfCloseEcho

port = reactor.listenTCP(0, Factory.forProtocol(HalfCloseEcho), interface="127.0.0.1")
print(port.getHost().port, flush=True)
reactor.run()
"""


def test_echo_is_half_close_aware() -> None:
    # Without the interface Twisted closes the connection on read EOF, dropping unsent data.
    assert IHalfCloseableProtocol.providedBy(HalfCloseEcho())


def test_echo_answers_then_closes_on_read_eof() -> None:
    echo = HalfCloseEcho()
    transport = StringTransport()
    echo.makeConnection(transport)
    echo.dataReceived(b"abc\n")
    echo.dataReceived(b"def\n")
    assert not transport.disconnecting
    echo.readConnectionLost()
    assert transport.value() == b"abc\ndef\n"
    assert transport.disconnecting  # loseConnection: closes after the buffer is flushed


def _exchange(port: int, payload: bytes, deadline: float) -> bytes:
    """Connect, send `payload`, shut down writing at once, read until EOF (or the deadline)."""
    received = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as client:
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no EOF before the deadline; {len(received)} bytes back")
            client.settimeout(remaining)
            chunk = client.recv(65536)
            if not chunk:
                return bytes(received)
            received += chunk


@pytest.mark.slow
def test_echo_over_tcp_with_client_half_close() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    server = subprocess.Popen([sys.executable, "-c", SERVER], cwd=REPO_ROOT, env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        deadline = time.monotonic() + TIMEOUT
        # The user's case (a line, then EOF) several times, since the old loss was a race;
        # then more than one socket buffer, so the reply is still queued when EOF comes.
        for _ in range(10):
            assert _exchange(port, b"abc\n", deadline) == b"abc\n"
        payload = bytes(range(256)) * 4096  # 1 MiB
        assert _exchange(port, payload, deadline) == payload
    finally:
        server.terminate()
        server.wait(TIMEOUT)
