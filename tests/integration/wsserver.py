"""A WebSocket echo origin for the byte-stream tests (the ``websockets`` package):
``wsserver.py PORT``.  Echoes every message, text or binary, up to 32 MiB."""

from __future__ import annotations

import asyncio
import sys

from websockets.asyncio.server import ServerConnection, serve


async def echo(connection: ServerConnection) -> None:
    async for message in connection:
        await connection.send(message)


async def main(port: int) -> None:
    async with serve(echo, "127.0.0.1", port, max_size=32 << 20, compression=None) as server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
