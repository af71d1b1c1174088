"""Loopback network helpers for end-to-end tests: echo servers and bounded retries."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def echo_server(host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[int]:
    """A TCP echo server on loopback (`port`, else a free one); yields its port."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, host, port)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def echo_once(
    host: str, port: int, payload: bytes, timeout: float = 5, *, source: str | None = None
) -> bytes:
    """Send payload, read the same number of bytes back; from address `source` if given."""
    local_addr = (source, 0) if source else None
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, local_addr=local_addr), timeout
    )
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(len(payload)), timeout)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def wait_for_echo(host: str, port: int, payload: bytes, timeout: float = 30) -> bytes:
    """Retry echo_once until the path through the relay is up, or raise TimeoutError."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return await echo_once(host, port, payload)
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            if loop.time() > deadline:
                raise TimeoutError(f"no echo through {host}:{port} within {timeout}s") from None
            await asyncio.sleep(0.3)


async def port_closes(host: str, port: int, timeout: float = 15) -> bool:
    """True once nothing accepts connections on host:port, False if still open at timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            return True
        writer.close()
        await asyncio.sleep(0.2)
    return False
