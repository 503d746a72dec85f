"""The floor of the 4 MiB row: a bare TCP relay, one connection at a time, no HTTP, no framing.

    python bench/relay.py --mode copy|splice LISTEN_PORT UPSTREAM_PORT

harness.py chains two of them on the mesh's CPU (``relay-copy``, ``relay-splice``) and moves
the same one-off 4 MiB transfers through them as through the mesh: what any path of two user
processes sharing that CPU costs at least.  ``copy`` moves bytes the way a Python proxy can
(``recv_into`` one reused 256 KiB buffer, ``sendall`` a view of it); ``splice`` never brings them
into the process (``os.splice`` through a 1 MiB pipe: the kernel moves pages), which no proxy
that reads what it forwards can do.  Loopback only; blocking sockets, epoll for which side has
bytes; a connection ends when either side closes.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import select
import socket

_READ = 256 * 1024
_PIPE = 1 << 20
_F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ from Python 3.10 on; spelled out for older stubs


def _copy(src: socket.socket, dst: socket.socket, view: memoryview) -> bool:
    got = src.recv_into(view)
    if got:
        dst.sendall(view[:got])
    return got > 0


def _splice(src: socket.socket, dst: socket.socket, pipe: tuple[int, int]) -> bool:
    read_end, write_end = pipe
    got = os.splice(src.fileno(), write_end, _PIPE, flags=os.SPLICE_F_MOVE)
    sent = 0
    while sent < got:
        sent += os.splice(read_end, dst.fileno(), got - sent, flags=os.SPLICE_F_MOVE)
    return got > 0


def serve(mode: str, listen_port: int, upstream_port: int) -> None:
    listener = socket.create_server(("127.0.0.1", listen_port), backlog=64)
    view = memoryview(bytearray(_READ))
    pipe = os.pipe()
    fcntl.fcntl(pipe[1], _F_SETPIPE_SZ, _PIPE)
    while True:
        client, _ = listener.accept()
        try:
            upstream = socket.create_connection(("127.0.0.1", upstream_port))
        except OSError:
            client.close()
            continue
        peers = {client.fileno(): (client, upstream), upstream.fileno(): (upstream, client)}
        poller = select.epoll()
        for fd in peers:
            poller.register(fd, select.EPOLLIN)
        try:
            open_ = True
            while open_:
                for fd, _ in poller.poll():
                    src, dst = peers[fd]
                    moved = _copy(src, dst, view) if mode == "copy" else _splice(src, dst, pipe)
                    if not moved:
                        open_ = False
                        break
        except OSError:
            pass  # a reset ends this connection only
        finally:
            poller.close()
            client.close()
            upstream.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--mode", choices=("copy", "splice"), required=True)
    parser.add_argument("listen_port", type=int)
    parser.add_argument("upstream_port", type=int)
    args = parser.parse_args()
    serve(args.mode, args.listen_port, args.upstream_port)


if __name__ == "__main__":
    main()
