"""What the HTTP/1.1 client tests' raw TCP servers share: the requests they keep and
how they read one (tests/integration/test_http1_*.py)."""

from __future__ import annotations

import asyncio


class Recorded:
    """A scripted server's record: each request's head and body, its port, and whether
    a connection saw the client close it."""

    def __init__(self) -> None:
        self.connections = 0
        self.heads: list[bytes] = []
        self.bodies: list[bytes] = []
        self.closed = asyncio.Event()  # a connection saw EOF from the client
        self.port = 0


async def read_request(reader: asyncio.StreamReader, server: Recorded) -> bool:
    """Read one request (head, then its Content-Length of body) into ``server``; False
    when the client closed the connection instead."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        server.closed.set()
        return False
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    server.heads.append(head)
    server.bodies.append(await reader.readexactly(length))
    return True
