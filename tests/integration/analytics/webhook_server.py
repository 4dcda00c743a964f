"""A minimal HTTP server on 127.0.0.1 that records POSTed JSON and answers scripted codes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

_REASONS = {200: "OK", 500: "Internal Server Error", 404: "Not Found"}


class WebhookServer:
    def __init__(self, statuses: list[int]) -> None:
        # Answers in order; the last one repeats.
        self.statuses = statuses
        self.bodies: list[dict[str, Any]] = []
        self.requests = 0
        self.received = asyncio.Event()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/alerts"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "content-length":
                length = int(value)
        body = await reader.readexactly(length)
        status = self.statuses[min(self.requests, len(self.statuses) - 1)]
        self.requests += 1
        if status == 200:
            self.bodies.append(json.loads(body))
            self.received.set()
        reply = (
            f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
            "Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        writer.write(reply.encode())
        await writer.drain()
        writer.close()
        await writer.wait_closed()


@asynccontextmanager
async def webhook_server(statuses: list[int]) -> AsyncIterator[WebhookServer]:
    server = WebhookServer(statuses)
    listener = await asyncio.start_server(server._handle, "127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()
        await listener.wait_closed()
