"""A gRPC origin for the byte-stream tests (the ``grpcio`` package, no generated code):
``grpcserver.py PORT``.  Methods of ``echo.Echo``, messages are raw bytes:
Unary (echo), ServerStream (b"N" → N messages), ClientStream (→ count and total size),
Bidi (echo each), Slow (answers after 3 s: for deadlines), Fail (NOT_FOUND)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc


def unary(request: bytes, context: Any) -> bytes:
    return request


def server_stream(request: bytes, context: Any) -> Iterator[bytes]:
    for i in range(int(request)):
        yield b"%d" % i


def client_stream(requests: Iterator[bytes], context: Any) -> bytes:
    count = size = 0
    for request in requests:
        count += 1
        size += len(request)
    return b"%d %d" % (count, size)


def bidi(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
    yield from requests


def slow(request: bytes, context: Any) -> bytes:
    time.sleep(3)
    return request


def fail(request: bytes, context: Any) -> bytes:
    context.abort(grpc.StatusCode.NOT_FOUND, "no such thing: " + request.decode())
    return b""


def main(port: int) -> None:
    raw: dict[str, Any] = {"request_deserializer": None, "response_serializer": None}
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary, **raw),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream, **raw),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream, **raw),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi, **raw),
        "Slow": grpc.unary_unary_rpc_method_handler(slow, **raw),
        "Fail": grpc.unary_unary_rpc_method_handler(fail, **raw),
    }
    server = grpc.server(ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("echo.Echo", handlers),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    main(int(sys.argv[1]))
