"""Anonymous memory of a node's TLS listener holding idle links (issue 15).

    PYTHONPATH=. /work/main/.venv/bin/python bench/tls_idle_links.py [--links 100]
        [--bytes 65536] [--keep-buffers] [--port 18790]

A child process (plain Twisted, this checkout's ``MutualTLS.server_factory``, as an edge's
hub listener) accepts ``--links`` mutual-TLS connections from this process on 127.0.0.1;
each link carries ``--bytes`` to the listener and ``--answer`` back (so that OpenSSL has
allocated its buffers), then all stay idle.  Prints the child's RssAnon before the links
and with them open and idle, and the difference per link (each after a ``malloc_trim`` in
the child: what is held, not what glibc kept of freed memory).  ``--keep-buffers`` clears
SSL_MODE_RELEASE_BUFFERS on the child's context (Twisted's CertificateOptions sets it):
what the mode buys per idle link.  ``--burst`` stops the listener (SIGSTOP) while each
upload is sent, so that it reads it in reads as large as it allows.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import os, sys
from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from edgemesh.security import TLSConfig
from edgemesh.security._links import MutualTLS

directory, port, keep = sys.argv[1], sys.argv[2], sys.argv[4] == "1"
size, answer = map(int, sys.argv[3].split(","))
tls = MutualTLS(reactor, TLSConfig.from_directory(directory, "edge-1"), node="edge-1",
                role="edge")
if keep:
    tls.material.server_options.getContext().clear_mode(SSL.MODE_RELEASE_BUFFERS)

class Answer(Protocol):
    got = 0
    def connectionMade(self):
        self.transport.write(b"!")  # sent once the handshake is done: the client waits for it
    def dataReceived(self, data):
        self.got += len(data)
        if self.got >= size:
            self.transport.write(b"x" * answer)
            self.got = -(1 << 62)

# SIGUSR1: give freed heap back (malloc_trim), so that RssAnon counts what is still held.
import ctypes, signal
libc = ctypes.CDLL("libc.so.6")
signal.signal(signal.SIGUSR1, lambda *_: reactor.callFromThread(libc.malloc_trim, 0))

factory = tls.server_factory(Factory.forProtocol(Answer))
serverFromString(reactor, f"tcp:{port}:interface=127.0.0.1").listen(factory)
print("ready", flush=True)
reactor.run()
"""


def rss_anon(pid: int) -> float:
    os.kill(pid, signal.SIGUSR1)  # malloc_trim first
    time.sleep(0.5)
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no RssAnon")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--links", type=int, default=100)
    parser.add_argument("--bytes", type=int, default=65536)
    parser.add_argument("--answer", type=int, default=None, help="bytes back (--bytes)")
    parser.add_argument("--burst", action="store_true",
                        help="stop the listener while a link uploads: it reads the upload at once")
    parser.add_argument("--keep-buffers", action="store_true")
    parser.add_argument("--port", type=int, default=18790)
    args = parser.parse_args()
    if args.answer is None:
        args.answer = args.bytes

    from OpenSSL import SSL

    from edgemesh.security._certs import init_ca_dir, issue_into_dir

    directory = tempfile.mkdtemp(prefix="edgemesh-tls-idle-")
    init_ca_dir(directory)
    issue_into_dir(directory, "edge-1")
    issue_into_dir(directory, "edge-2")
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, directory, str(args.port), f"{args.bytes},{args.answer}",
         "1" if args.keep_buffers else "0"], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError("the listener did not start")
        time.sleep(1.0)  # let the child's start-up allocations settle before the baseline
        before = rss_anon(child.pid)
        # Blocking pyOpenSSL clients (pyOpenSSL needs blocking sockets; SIGALRM bounds the
        # whole): each sends, reads the answer, and stays open.
        signal.alarm(120)
        context = SSL.Context(SSL.TLS_METHOD)
        context.use_certificate_file(os.path.join(directory, "edge-2.pem"))
        context.use_privatekey_file(os.path.join(directory, "edge-2.key"))
        context.load_verify_locations(os.path.join(directory, "ca.pem"))
        context.set_verify(SSL.VERIFY_PEER, lambda *_: True)
        import socket

        links = []
        for _ in range(args.links):
            sock = socket.create_connection(("127.0.0.1", args.port))
            connection = SSL.Connection(context, sock)
            connection.set_connect_state()
            connection.do_handshake()
            if connection.recv(1) != b"!":  # the listener's side of the handshake is done
                raise RuntimeError("no greeting")
            if args.burst:
                os.kill(child.pid, signal.SIGSTOP)  # the whole upload waits in the socket
            connection.sendall(b"y" * args.bytes)
            if args.burst:
                os.kill(child.pid, signal.SIGCONT)
            got = 0
            while got < args.answer:  # bounded by the alarm
                got += len(connection.recv(65536))
            links.append(connection)
        time.sleep(2.0)  # idle: the child has nothing left to do
        during = rss_anon(child.pid)
        mode = "kept (mode cleared)" if args.keep_buffers else "released (Twisted's default)"
        burst = ", in one burst" if args.burst else ""
        print(f"{args.links} idle links ({args.bytes} B in{burst}, {args.answer} B out), "
              f"record buffers {mode}: RssAnon {before:.1f} -> "
              f"{during:.1f} MiB, {(during - before) * 1024 / args.links:.1f} KiB per link")
        for connection in links:
            connection.close()
    finally:
        child.terminate()
        child.wait(timeout=30)


if __name__ == "__main__":
    main()
