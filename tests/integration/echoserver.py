"""A trivial TCP echo origin for the byte-stream tests: ``echoserver.py PORT [PORT...]``.

Echoes every byte back; when the client half-closes, it finishes echoing and half-closes
too (then the connection is over).  The client side of the tests is a real tool (socat)."""

from __future__ import annotations

import asyncio
import sys


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()  # a client that stops reading stops us reading
        if writer.can_write_eof():
            writer.write_eof()
        await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def main(ports: list[int]) -> None:
    servers = [await asyncio.start_server(echo, "127.0.0.1", port) for port in ports]
    await asyncio.gather(*(server.serve_forever() for server in servers))


if __name__ == "__main__":
    asyncio.run(main([int(port) for port in sys.argv[1:]]))
