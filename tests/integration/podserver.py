"""Sample pods for the integration tests: one process, one HTTP/1.1 server per pod.

    python podserver.py NAME=PORT [NAME=PORT ...]

Every server answers with ``X-Pod: NAME`` and, unless a route below says otherwise, a JSON
body describing the request it received (method, target, headers in order, body length and
sha256; the body is consumed while it streams, never held whole):

    GET /bytes?n=N&seed=S[&chunked=1]   N bytes of ``pattern(seed)``, generated on the fly
    GET /slow?s=SECONDS                 answers after SECONDS
    GET /status?code=C                  answers with status C
    GET /hop                            a response carrying hop-by-hop and end-to-end fields
    POST /trailers                      the description, chunked, with trailer fields after it:
                                        X-Body-Sha256 (of the request body) and X-Echo-NAME for
                                        each trailer field NAME of the request

The description lists the request's trailer fields (``trailers``), if it was chunked.

A pod whose NAME starts with ``close-`` answers every request with ``Connection: close``
and closes (an origin that never keeps a connection alive, so the mesh never has one pooled);
it also listens on 127.0.0.2, the same port, so that a catalog can give it a ClusterIP of its
own (the router reaches cloud services at clusterIP:port).

Prints ``ready`` once every port listens.  Standard library only: the mesh under test must
not share code with its own test pods.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

CHUNK = 64 * 1024


def pattern(seed: int, n: int) -> Iterator[bytes]:
    """N deterministic bytes in pieces of at most 64 KiB.  Each piece starts with its own
    index, so a lost, repeated or reordered piece changes the sha256."""
    base = hashlib.sha256(b"seed:%d" % seed).digest() * (CHUNK // 32)
    index = 0
    while n > 0:
        piece = struct.pack(">Q", index) + base[8:]
        if n < CHUNK:
            piece = piece[:n]
        n -= len(piece)
        index += 1
        yield piece


class PodHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    pod = "?"

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: the tests read the mesh's logs, not ours

    # -- request body ------------------------------------------------------------------

    def _consume_body(self) -> tuple[int, str, str]:
        """Read the whole body as it streams: (length, sha256 hex, framing)."""
        self.trailers: list[list[str]] = []
        digest = hashlib.sha256()
        total = 0
        coding = (self.headers.get("Transfer-Encoding") or "").strip().lower()
        if coding == "chunked":
            while True:
                line = self.rfile.readline(1024)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while (line := self.rfile.readline(1024)) not in (b"\r\n", b"\n", b""):
                        name, _, value = line.decode("latin-1").partition(":")
                        self.trailers.append([name.strip(), value.strip()])
                    return total, digest.hexdigest(), "chunked"
                left = size
                while left:
                    data = self.rfile.read(min(left, CHUNK))
                    if not data:
                        raise ConnectionError("request body truncated")
                    digest.update(data)
                    total += len(data)
                    left -= len(data)
                self.rfile.readline(16)
        length = int(self.headers.get("Content-Length") or 0)
        left = length
        while left:
            data = self.rfile.read(min(left, CHUNK))
            if not data:
                raise ConnectionError("request body truncated")
            digest.update(data)
            total += len(data)
            left -= len(data)
        return total, digest.hexdigest(), ("length" if "Content-Length" in self.headers else "none")

    # -- responses --------------------------------------------------------------------

    def _send(self, status: int, body: bytes, headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.send_response(status)
        self.send_header("X-Pod", self.pod)
        if self.pod.startswith("close-"):
            self.send_header("Connection", "close")  # also makes the server close
        for name, value in headers:
            self.send_header(name, value)
        if self.command == "HEAD" or status in (204, 304):
            self.end_headers()
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _describe(self, length: int, sha: str, framing: str) -> bytes:
        return json.dumps(
            {
                "pod": self.pod,
                "method": self.command,
                "path": self.path,
                "version": self.request_version,
                "headers": [[k, v] for k, v in self.headers.items()],
                "body_length": length,
                "body_sha256": sha,
                "body_framing": framing,
                "trailers": self.trailers,
            }
        ).encode()

    def _handle(self) -> None:
        length, sha, framing = self._consume_body()
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        route = url.path
        if route == "/bytes":
            self._stream(int(query.get("n", "0")), int(query.get("seed", "0")),
                         query.get("chunked") == "1")
            return
        if route == "/trailers":
            self._send_with_trailers(self._describe(length, sha, framing), sha)
            return
        if route == "/slow":
            time.sleep(float(query.get("s", "1")))
        extra: tuple[tuple[str, str], ...] = (("Content-Type", "application/json"),)
        status = 200
        if route == "/status":
            status = int(query.get("code", "200"))
        elif route == "/hop":
            extra += (
                ("X-End-To-End", "kept"),
                ("Connection", "X-Hop-Listed"),
                ("X-Hop-Listed", "must-go"),
                ("Keep-Alive", "timeout=5"),
                ("Proxy-Connection", "keep-alive"),
                ("Trailer", "X-Never"),
                ("Upgrade", "h2c"),
            )
        self._send(status, self._describe(length, sha, framing), extra)

    def _send_with_trailers(self, body: bytes, sha: str) -> None:
        self.send_response(200)
        self.send_header("X-Pod", self.pod)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Trailer", "X-Body-Sha256")
        self.end_headers()
        fields = [("X-Body-Sha256", sha)] + [(f"X-Echo-{k}", v) for k, v in self.trailers]
        self.wfile.write(b"%x\r\n%s\r\n0\r\n" % (len(body), body)
                         + b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in fields)
                         + b"\r\n")

    def _stream(self, n: int, seed: int, chunked: bool) -> None:
        self.send_response(200)
        self.send_header("X-Pod", self.pod)
        self.send_header("Content-Type", "application/octet-stream")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(n))
        self.end_headers()
        if self.command == "HEAD":
            return
        write = self.wfile.write
        for piece in pattern(seed, n):
            if chunked:
                write(b"%x\r\n%s\r\n" % (len(piece), piece))
            else:
                write(piece)
        if chunked:
            write(b"0\r\n\r\n")

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _handle


class PodServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # the concurrency test opens hundreds of connections at once


def main(argv: list[str]) -> None:
    servers: list[PodServer] = []
    for spec in argv:
        name, _, port = spec.rpartition("=")
        handler = type(f"Pod_{len(servers)}", (PodHandler,), {"pod": name})
        servers.append(PodServer(("127.0.0.1", int(port)), handler))
        if name.startswith("close-"):
            servers.append(PodServer(("127.0.0.2", int(port)), handler))
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1:])
