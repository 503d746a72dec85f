"""Instructions per call of a link's TLS layer, in one process (no mesh, no timing).

    PYTHONPATH=. /work/main/.venv/bin/python bench/tls_call_cost.py [--tree DIR]

Runs itself under ``valgrind --tool=callgrind`` twice per case, with few and many calls,
and prints the difference per call (start-up, the PKI and the handshake cancel out), split
by where it runs (callgrind_annotate's functions: copies, the cipher, the rest of OpenSSL,
cffi, the interpreter, other; in k instructions):

- ``write``: the node's TLS layer (``_LinkTLS``, on a real ``tcp.Server`` transport over a
  socketpair) sends a frame head and a 75 KiB body (``writeSequence``); the peer's socket is
  drained raw.  Per write and per MiB.
- ``small-read``: the node's TLS layer receives one read holding one record of 40 bytes (a
  credit frame's size) over iosim's fake transport.  The peer's making of the record is
  measured alone and taken off.

``--tree`` measures another checkout (e.g. ``git archive BASE | tar -x -C DIR``; it needs
the tests' helpers of this one's vintage: tests/test_tls.py's ``CountingSocket``).
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

BODY = 75 * 1024


def _pki() -> Any:
    from tests import test_tls as T

    directory = Path(tempfile.mkdtemp(prefix="edgemesh-tls-call-")) / "pki"
    T.init_ca_dir(str(directory))
    T.issue_into_dir(str(directory), "router", router=True)
    T.issue_into_dir(str(directory), "edge-1")
    return T.PKI(directory)


def writes(count: int) -> None:
    from twisted.internet.testing import MemoryReactorClock

    from edgemesh.security import MutualTLS
    from tests import test_tls as T

    pki = _pki()
    reactor = MemoryReactorClock()
    tls = MutualTLS(reactor, pki.config("router"), node="router", role="router")
    server: Any = tls.server_factory(T.serving(T.Bytes())).buildProtocol(T.ADDRESS)
    client = T.tls_client(reactor, pki.ca, "router", pki.issued("edge-1"),
                          T.serving(T.Bytes())).buildProtocol(T.ADDRESS)
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    ours, theirs = T.CountingSocket(a), T.CountingSocket(b)
    our_end = T.socket_transport(reactor, ours, server)
    their_end = T.socket_transport(reactor, theirs, client)
    T.pump_sockets(reactor, (our_end, ours), (their_end, theirs))
    b.setblocking(False)
    head, body = b"h" * 12, os.urandom(BODY)
    for _ in range(count):
        server.writeSequence((head, body))
        while True:
            try:
                b.recv(1 << 20)
            except BlockingIOError:
                break


def small_reads(count: int, receive: bool = True) -> None:
    from twisted.internet.protocol import Protocol
    from twisted.internet.testing import MemoryReactorClock

    from edgemesh.security import MutualTLS
    from tests import test_tls as T

    pki = _pki()
    reactor = MemoryReactorClock()
    tls = MutualTLS(reactor, pki.config("router"), node="router", role="router")
    server: Any = tls.server_factory(T.serving(Protocol())).buildProtocol(T.ADDRESS)
    client_app = T.Bytes()
    client = T.tls_client(reactor, pki.ca, "router", pki.issued("edge-1"),
                          T.serving(client_app)).buildProtocol(T.ADDRESS)
    pump = T.connect(server, T.makeFakeServer(server), client, T.makeFakeClient(client),
                     greet=False, clock=reactor)
    pump.flush()
    reads = []
    for _ in range(count):
        client_app.transport.write(b"c" * 40)
        reactor.advance(0)
        reads.append(pump.clientIO.getOutBuffer())
    if receive:
        for data in reads:
            server.dataReceived(data)


PARTS = (
    # (part, pattern of callgrind_annotate's "file:function [object]"), first match wins.
    ("copies", r"__mem(cpy|move|set)"),
    ("cipher", r"(aes|gcm|ghash|clmul)"),
    ("OpenSSL", r"(lib(ssl|crypto)|_rust\.abi3)"),
    ("cffi", r"_cffi_backend"),
    ("Python", r"(python|libpython)"),
)


def instructions(tree: str, case: str, count: int) -> dict[str, int]:
    """The run's instructions: "total" and PARTS' (the rest in "other")."""
    with tempfile.NamedTemporaryFile(prefix="callgrind.", delete=False) as out:
        path = out.name
    env = dict(os.environ, PYTHONPATH=tree, PYTHONHASHSEED="0")  # (same dict layouts each run)
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={path}",
                    sys.executable, os.path.abspath(__file__), "--run", case, str(count)],
                   cwd=tree, env=env, check=True, capture_output=True)
    try:
        text = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100", path],
                              capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(path)
    parts = dict.fromkeys([*(name for name, _ in PARTS), "other", "total"], 0)
    for line in text.splitlines():
        match = re.match(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*)$", line)
        if match is None:
            continue
        count_, where = int(match.group(1).replace(",", "")), match.group(2)
        if "PROGRAM TOTALS" in where:
            parts["total"] = count_
            continue
        for name, pattern in PARTS:
            if re.search(pattern, where, re.IGNORECASE):
                parts[name] += count_
                break
        else:
            parts["other"] += count_
    return parts


def per_call(tree: str, case: str, few: int, many: int) -> dict[str, float]:
    low, high = instructions(tree, case, few), instructions(tree, case, many)
    return {name: (high[name] - low[name]) / (many - few) for name in high}


def split(parts: dict[str, float]) -> str:
    return ", ".join(f"{name} {parts[name] / 1e3:.1f}" for name in parts if name != "total")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", default=os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    parser.add_argument("--run", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        sys.path.insert(0, os.getcwd())
        case, count = args.run[0], int(args.run[1])
        {"write": writes, "small-read": small_reads,
         "small-read-peer": lambda n: small_reads(n, receive=False)}[case](count)
        return
    write = per_call(args.tree, "write", 100, 500)
    per_write = write["total"]
    print(f"write: {per_write / 1e3:.1f} k instructions per {BODY // 1024} KiB write, "
          f"{per_write * (1 << 20) / BODY / 1e6:.2f} M per MiB ({split(write)} k)")
    both = per_call(args.tree, "small-read", 500, 2500)
    peer = per_call(args.tree, "small-read-peer", 500, 2500)
    read = {name: both[name] - peer[name] for name in both}
    print(f"small-read: {read['total'] / 1e3:.1f} k instructions per one-record read "
          f"({split(read)} k)")


if __name__ == "__main__":
    main()
