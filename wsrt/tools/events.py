"""A Server-Sent Events client: HTTP/1.1 over asyncio streams (TLS for https), chunked
bodies, and the event-stream format as the WHATWG spec parses it (``event:``, ``id:``,
``data:`` lines joined by newlines, comments, ``retry:``).

:class:`SseClient` is what ``wsrt tail --sse`` and ``wsrt check --sse`` read a stream
with, and the tests too; :class:`SseConnection` gives it the surface of a websockets
connection that ``tail`` reads (the subscribes it is sent become the request).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

from wsrt.tools.server import EVENT_TIMEOUT


@dataclass
class Event:
    kind: str
    data: str
    #: The last event id after this event (the one a browser would send back).
    last_id: str | None
    #: Did this event carry an ``id:`` line?
    has_id: bool

    def json(self) -> dict[str, Any]:
        obj: dict[str, Any] = json.loads(self.data)
        return obj


@dataclass
class SseClient:
    """``await SseClient.open(http, channels=…, token=…)``: the status, the headers, and
    (for a 200) :meth:`next` events. ``small``: a 4 KiB receive buffer (a slow reader)."""

    status: int
    headers: dict[str, str]
    body: bytes
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    sock: socket.socket
    retry: int | None = None
    comments: int = 0
    last_id: str | None = None
    ended: bool = False
    _buffer: bytes = b""
    _pending: list[Event] = field(default_factory=list)

    @classmethod
    async def open(
        cls,
        http: str,
        headers: dict[str, str] | None = None,
        small: bool = False,
        **query: str,
    ) -> SseClient:
        parts = urlsplit(http)
        secure = parts.scheme == "https"
        port = parts.port or (443 if secure else 80)
        sock = socket.socket()
        if small:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (parts.hostname, port))
        # A small reader limit too: asyncio reads ahead of the caller up to twice it.
        reader, writer = await asyncio.open_connection(
            sock=sock, limit=1024 if small else 1 << 16,
            ssl=ssl.create_default_context() if secure else None,
            server_hostname=parts.hostname if secure else None,
        )  # fmt: skip
        path = parts.path.rstrip("/") + "/sse"
        lines = [
            f"GET {path}?{urlencode(query)} HTTP/1.1", f"Host: {parts.netloc}",
            "Accept: text/event-stream", *(f"{k}: {v}" for k, v in (headers or {}).items()),
        ]  # fmt: skip
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), EVENT_TIMEOUT)
        status_line, *header_lines = head.decode().split("\r\n")
        status = int(status_line.split()[1])
        got = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                got[name.strip().lower()] = value.strip()
        body = b""
        if "content-length" in got:
            body = await reader.readexactly(int(got["content-length"]))
        return cls(status, got, body, reader, writer, sock)

    async def next(self, seconds: float = EVENT_TIMEOUT) -> Event:
        """The next event (comments and ``retry:`` are counted, not returned)."""
        return await asyncio.wait_for(self._next(), seconds)

    async def _next(self) -> Event:
        while not self._pending:
            if self.ended:
                raise EOFError("the stream ended")
            await self._chunk()
        return self._pending.pop(0)

    async def _chunk(self) -> None:
        size_line = await self.reader.readline()
        if not size_line:
            self.ended = True
            return
        size = int(size_line.strip(), 16)
        data = await self.reader.readexactly(size + 2)
        if size == 0:
            self.ended = True
            return
        self._feed(data[:-2])

    def _feed(self, data: bytes) -> None:
        self._buffer += data
        while b"\n\n" in self._buffer:
            block, self._buffer = self._buffer.split(b"\n\n", 1)
            kind, datas, has_id = "message", [], False
            for line in block.decode().split("\n"):
                if line.startswith(":"):
                    self.comments += 1
                    continue
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "event":
                    kind = value
                elif name == "data":
                    datas.append(value)
                elif name == "id":
                    self.last_id, has_id = value, True
                elif name == "retry":
                    self.retry = int(value)
            if datas:
                self._pending.append(Event(kind, "\n".join(datas), self.last_id, has_id))

    async def heartbeat(self, seconds: float = EVENT_TIMEOUT) -> None:
        """Read until a comment line (a heartbeat) arrives; the events meanwhile wait."""
        seen = self.comments
        async with asyncio.timeout(seconds):
            while self.comments == seen:
                if self.ended:
                    raise EOFError("the stream ended")
                await self._chunk()

    async def until(self, kind: str, seconds: float = EVENT_TIMEOUT) -> list[Event]:
        """Events up to and including the first of ``kind``."""
        seen: list[Event] = []
        async with asyncio.timeout(seconds):
            while not seen or seen[-1].kind != kind:
                seen.append(await self._next())
        return seen

    async def messages(self, count: int, seconds: float = EVENT_TIMEOUT) -> list[Event]:
        """The next ``count`` ``message`` events (others skipped)."""
        got: list[Event] = []
        async with asyncio.timeout(seconds):
            while len(got) < count:
                event = await self._next()
                if event.kind == "message":
                    got.append(event)
        return got

    def grow(self) -> None:
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


def http_base(url: str) -> str:
    """``ws://host:8080/ws`` → ``http://host:8080`` (where ``/sse`` is beside ``/ws``)."""
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    path = parts.path[: -len("/ws")] if parts.path.endswith("/ws") else parts.path.rstrip("/")
    return f"{scheme}://{parts.netloc}{path}"


class SseConnection:
    """A stream with what ``wsrt tail`` uses of a websockets connection: the ``subscribe``
    messages it is sent before it reads become the request (``?subscriptions=``), each
    event's JSON is a frame, and a ``close`` event or the end is its close code and
    reason. A refusal raises websockets' ``InvalidStatus``, as an upgrade's would."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.token = token
        self.subscribes: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.client: SseClient | None = None

    async def __aenter__(self) -> SseConnection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.client is not None:
            await self.client.close()

    async def send(self, text: str) -> None:
        self.subscribes.append(json.loads(text))

    def __aiter__(self) -> AsyncIterator[str]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[str]:
        from websockets.datastructures import Headers
        from websockets.exceptions import InvalidStatus
        from websockets.http11 import Response

        query = {"subscriptions": json.dumps(self.subscribes)}
        headers = {"Authorization": f"Bearer {self.token}"}
        try:
            client = await SseClient.open(http_base(self.url), headers, False, **query)
        except EOFError:  # the server closed before it answered
            raise ConnectionError(f"{self.url}: the server closed the connection") from None
        self.client = client
        if client.status != 200:
            response = Response(client.status, "", Headers(client.headers), client.body)
            raise InvalidStatus(response)
        while True:
            try:
                event = await client._next()
            except (EOFError, ConnectionError, asyncio.IncompleteReadError):
                self.close_code, self.close_reason = 1006, ""
                return
            if event.kind == "close":
                said = event.json()
                self.close_code, self.close_reason = said.get("code"), said.get("reason")
                return
            yield event.data
