"""A real ``wsrt serve`` process for tests, observed through its JSON log lines.

The server runs as ``python -m wsrt serve`` with ``WS_LOG_FORMAT=json`` on
port 0 of 127.0.0.1; a reader thread parses each log line and wakes the test
waiting for an event (``listening``, ``readiness`` …). Tests wait on those
events, never on time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wsrt.auth import mint_token

SECRET = "integration-test-secret-0123456789abcdef"
EVENT_TIMEOUT = 60.0

Event = dict[str, Any]


class ServerProcess:
    def __init__(
        self,
        bootstrap: str,
        topics: list[str],
        cwd: Path,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
    ) -> None:
        self.env = {
            "PATH": os.environ["PATH"],
            "HOME": os.environ.get("HOME", "/tmp"),
            "WS_AUTH_SECRET": SECRET,
            "WS_BIND_ADDRESS": "127.0.0.1:0",
            "WS_KAFKA_BROKERS": bootstrap,
            "WS_KAFKA_TOPICS": ",".join(topics),
            "WS_LOG_FORMAT": "json",
            "WS_LOG_LEVEL": "DEBUG",
            "WS_SHUTDOWN_TIMEOUT_SECONDS": "10",
            "WS_KAFKA_FETCH_MAX_WAIT_SECONDS": "0.05",
            "WS_KAFKA_METADATA_REFRESH_SECONDS": "2",
            **(env or {}),
        }
        self.args = args or []
        self.cwd = cwd
        self.events: list[Event] = []
        self.raw: list[str] = []
        self._cond = threading.Condition()
        self.process: subprocess.Popen[str] | None = None
        self.port: int | None = None

    def start(self) -> ServerProcess:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "wsrt", "serve", *self.args],
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        listening = self.wait_for("listening")
        self.port = listening["port"]
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for line in self.process.stderr:
            with self._cond:
                self.raw.append(line)
                try:
                    event = json.loads(line)
                except ValueError:
                    event = {"event": "raw", "message": line.rstrip()}
                self.events.append(event)
                self._cond.notify_all()
        with self._cond:
            self.events.append({"event": "process_exited"})
            self._cond.notify_all()

    def wait_for(
        self,
        event: str,
        predicate: Callable[[Event], bool] = lambda e: True,
        timeout: float = EVENT_TIMEOUT,
        start: int = 0,
    ) -> Event:
        """The first log event named ``event`` (from index ``start``) that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        seen = start
        with self._cond:
            while True:
                for e in self.events[seen:]:
                    if e.get("event") == event and predicate(e):
                        return e
                    if e.get("event") == "process_exited" and event != "process_exited":
                        raise AssertionError(f"server exited before {event}:\n{self.log_text()}")
                seen = len(self.events)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no {event} event within {timeout}s:\n{self.log_text()}")
                self._cond.wait(remaining)

    def mark(self) -> int:
        """Index to wait for events that happen after now."""
        with self._cond:
            return len(self.events)

    def wait_ready(self) -> ServerProcess:
        self.wait_for("readiness", lambda e: e.get("status") == "ok")
        return self

    def log_text(self) -> str:
        with self._cond:
            return "".join(self.raw[-80:])

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait_exit(self, timeout: float = 30) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


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
        import asyncio
        import socket

        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)

        async def run() -> None:
            while True:
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

        await asyncio.wait_for(run(), timeout)
        self._collect()
        close = self.protocol.close_rcvd
        return (close.code, close.reason) if close else (None, None)

    def close(self) -> None:
        self.writer.close()
