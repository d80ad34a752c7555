"""Helpers of the integration tests: the server process, tokens, clients."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from wsrt.auth import mint_token
from wsrt.tools.server import EVENT_TIMEOUT, ServerProcess

SECRET = "integration-test-secret-0123456789abcdef"

__all__ = ["SECRET", "ServerProcess", "StalledClient", "auth", "messages", "next_json", "token"]


def token(subject: str = "tester", **kwargs: Any) -> str:
    return mint_token(SECRET, subject, **kwargs)


def auth(subject: str = "tester", **kwargs: Any) -> dict[str, str]:
    """Headers that authenticate a websockets client."""
    return {"Authorization": f"Bearer {token(subject, **kwargs)}"}


async def next_json(ws: Any, timeout: float = EVENT_TIMEOUT) -> dict[str, Any]:
    """The next frame of a websockets client, parsed."""
    import asyncio

    frame = await asyncio.wait_for(ws.recv(), timeout)
    obj: dict[str, Any] = json.loads(frame)
    return obj


async def messages(ws: Any, count: int, timeout: float = EVENT_TIMEOUT) -> list[dict[str, Any]]:
    """The next ``count`` ``message`` envelopes (other frames are skipped)."""
    import asyncio

    received: list[dict[str, Any]] = []

    async def run() -> None:
        while len(received) < count:
            obj = json.loads(await ws.recv())
            if obj.get("type") == "message":
                received.append(obj)

    try:
        await asyncio.wait_for(run(), timeout)
    except TimeoutError:
        raise AssertionError(f"got {len(received)} of {count} messages: {received[-3:]}") from None
    return received


class StalledClient:
    """A WebSocket client that stops reading after the handshake.

    It speaks the protocol through websockets' own Sans-I/O ``ClientProtocol``
    over a socket with a tiny receive buffer, and reads nothing until
    :meth:`drain`, which returns the text frames received and the close frame.
    """

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.url = url
        self.headers = headers
        self.frames: list[str] = []

    async def connect(self) -> StalledClient:
        import asyncio
        import socket

        from websockets.client import ClientProtocol
        from websockets.protocol import State
        from websockets.uri import parse_uri

        uri = parse_uri(self.url)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (uri.host, uri.port))
        self.sock = sock
        self.reader, self.writer = await asyncio.open_connection(sock=sock, limit=1024)
        self.protocol = ClientProtocol(uri, max_size=None)
        request = self.protocol.connect()
        for name, value in self.headers.items():
            request.headers[name] = value
        self.protocol.send_request(request)
        self._flush()
        while self.protocol.state is State.CONNECTING:
            data = await self.reader.read(1024)
            if not data:
                raise AssertionError("connection closed during the handshake")
            self.protocol.receive_data(data)
        self._collect()
        if self.protocol.handshake_exc is not None:
            raise self.protocol.handshake_exc
        return self

    def send(self, text: str) -> None:
        """Send a text frame (it leaves even while the client reads nothing)."""
        self.protocol.send_text(text.encode())
        self._flush()

    def _flush(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                self.writer.write(data)

    def _collect(self) -> None:
        from websockets.frames import Opcode

        for event in self.protocol.events_received():
            if getattr(event, "opcode", None) is Opcode.TEXT:
                self.frames.append(event.data.decode())

    async def drain(self, timeout: float = EVENT_TIMEOUT) -> tuple[int | None, str | None]:
        """Read everything the server sent until it closes; the close code and reason."""
        await self.read(timeout=timeout)
        close = self.protocol.close_rcvd
        return (close.code, close.reason) if close else (None, None)

    async def read(
        self,
        until: Callable[[list[str]], bool] | None = None,
        timeout: float = EVENT_TIMEOUT,
        *,
        stalled: bool = False,
    ) -> None:
        """Read until ``until(frames)`` holds or the server closes.

        The receive buffer grows to take everything at once, unless
        ``stalled``: a reply can be read and the client stall again.
        """
        import asyncio
        import socket

        if not stalled:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)

        async def run() -> None:
            while until is None or not until(self.frames):
                try:
                    data = await self.reader.read(1 << 20)
                except ConnectionError:
                    data = b""
                if not data:
                    self.protocol.receive_eof()
                    break
                self.protocol.receive_data(data)
                self._collect()
                self._flush()

        try:
            await asyncio.wait_for(run(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"after {len(self.frames)} frames, still waiting: {self.frames[-3:]}"
            ) from None
        self._collect()

    def close(self) -> None:
        self.writer.close()
