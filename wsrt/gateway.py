"""HTTP and WebSocket edge on the websockets library.

``process_request`` answers ``/healthz``, ``/livez`` and ``/metrics`` and
guards ``/ws`` (draining → 503, Origin → 403, token → 401) before any
upgrade. Each accepted connection gets a :class:`ConnectionOutlet`, through
which the hub writes pre-built frames straight to the transport, and a
:class:`~wsrt.session.Session` that answers its control messages.
"""

from __future__ import annotations

import asyncio
import http
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from wsrt import health, protocol
from wsrt.auth import AuthError, Claims, Verifier, origin_allowed
from wsrt.config import Settings
from wsrt.hub import DeliveryStats, Hub, Outlet
from wsrt.logs import EventLogger, RateLimited
from wsrt.metrics import Stats, close_reason
from wsrt.protocol import split_channel, text_frame
from wsrt.session import Effects, Session


class ConnectionOutlet(Outlet):
    """Writes hub frames to one WebSocket connection's transport."""

    def __init__(
        self,
        connection: ClientConnection,
        limit: int,
        on_overflow: Callable[[Outlet], None],
        delivery: DeliveryStats,
    ) -> None:
        super().__init__(limit, on_overflow, delivery)
        self.connection = connection
        self.paused = connection.paused
        self._protocol = connection.protocol
        self._write = connection.transport.write

    def write(self, data: bytes) -> None:
        # Frames are whole, so they never interleave with the library's own
        # writes (pongs, close); after the close frame nothing more may go out.
        if self._protocol.state is State.OPEN:
            self._write(data)


class ClientConnection(ServerConnection):
    """A server connection that tells its outlet when the transport pauses."""

    #: SO_SNDBUF for accepted sockets (0 leaves the kernel's autotuning), set by the gateway.
    send_buffer_bytes = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.outlet: ConnectionOutlet | None = None
        self.claims: Claims | None = None
        self.initial_channels: list[str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Bound what the kernel holds for a client that stops reading: with
        # autotuning a socket can buffer megabytes before the transport pauses,
        # which delays the slow-consumer verdict and costs memory per client.
        sock = transport.get_extra_info("socket")
        if self.send_buffer_bytes and sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer_bytes)
        super().connection_made(transport)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.outlet is not None:
            self.outlet.pause()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.outlet is not None:
            self.outlet.resume()


def _bearer(request: Request) -> str | None:
    header = request.headers.get("Authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return None


def _json_response(status: http.HTTPStatus, body: dict[str, Any]) -> Response:
    headers = Headers([("Content-Type", "application/json"), ("Cache-Control", "no-store")])
    return Response(status.value, status.phrase, headers, orjson.dumps(body) + b"\n")


def _text_response(status: http.HTTPStatus, text: str) -> Response:
    headers = Headers([("Content-Type", "text/plain; charset=utf-8")])
    return Response(status.value, status.phrase, headers, text.encode() + b"\n")


class Gateway:
    def __init__(
        self,
        settings: Settings,
        hub: Hub,
        verifier: Verifier,
        readiness: health.Readiness,
        log: EventLogger,
        stats: Stats,
        delivery: DeliveryStats,
        metrics: Callable[[], tuple[bytes, str]] | None = None,
    ) -> None:
        self.settings = settings
        self.stats = stats
        self.delivery = delivery
        self.hub = hub
        self.verifier = verifier
        self.readiness = readiness
        self.log = log
        self.metrics = metrics
        self.server: Server | None = None
        self._auth_failures = RateLimited(log)
        self._slow = RateLimited(log, interval=1.0)
        self._close_tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> Server:
        s = self.settings
        self.server = await serve(
            self._handler,
            s.bind_host,
            s.bind_port,
            process_request=self._process_request,
            create_connection=type(
                "Connection", (ClientConnection,), {"send_buffer_bytes": s.send_buffer_bytes}
            ),
            # Pre-built frames are shared by every client: no per-client deflate.
            compression=None,
            max_size=s.max_frame_bytes,
            ping_interval=s.ping_interval or None,
            ping_timeout=s.ping_interval or None,
            close_timeout=min(5.0, s.shutdown_timeout / 2),
            server_header=None,
        )
        return self.server

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    # -- HTTP ------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path, _, query = request.path.partition("?")
        if path == "/healthz":
            return self._healthz()
        if path == "/livez":
            return _json_response(http.HTTPStatus.OK, {"status": "ok"})
        if path == "/metrics" and self.metrics is not None:
            body, content_type = self.metrics()
            headers = Headers([("Content-Type", content_type)])
            return Response(200, "OK", headers, body)
        if path != "/ws":
            return _text_response(http.HTTPStatus.NOT_FOUND, "not found; WebSocket clients use /ws")
        remote = _remote(connection)
        if self.readiness.draining:
            self.stats.handshakes_rejected["draining"] += 1
            return _text_response(http.HTTPStatus.SERVICE_UNAVAILABLE, "server is shutting down")
        origin = request.headers.get("Origin")
        if origin is not None and not origin_allowed(origin, self.settings.allowed_origins):
            self._auth_failures.warning(
                "handshake_rejected", "origin not allowed", status=403, reason="origin",
                origin=origin[:200], remote=remote,
            )  # fmt: skip
            self.stats.handshakes_rejected["origin"] += 1
            return _text_response(http.HTTPStatus.FORBIDDEN, "origin not allowed")
        params = parse_qs(query)
        token = _bearer(request) or next(iter(params.get("token", [])), "")
        try:
            claims = self.verifier.verify(token)
        except AuthError as exc:
            self._auth_failures.warning(
                "handshake_rejected", "authentication failed", status=401, reason=exc.reason,
                remote=remote,
            )  # fmt: skip
            self.stats.handshakes_rejected[exc.reason] += 1
            return _text_response(http.HTTPStatus.UNAUTHORIZED, f"unauthorized: {exc.reason}")
        assert isinstance(connection, ClientConnection)
        connection.claims = claims
        connection.initial_channels = [
            c.strip() for value in params.get("channels", []) for c in value.split(",") if c.strip()
        ]
        return None

    def _healthz(self) -> Response:
        r = self.readiness
        body: dict[str, Any] = {"status": r.status}
        if not r.ready:
            body["reason"] = r.reason
        body["connections"] = self.hub_connections()
        status = http.HTTPStatus.OK if r.ready else http.HTTPStatus.SERVICE_UNAVAILABLE
        return _json_response(status, body)

    def hub_connections(self) -> int:
        return len(self.server.connections) if self.server is not None else 0

    # -- WebSocket -------------------------------------------------------------

    async def _handler(self, connection: ServerConnection) -> None:
        assert isinstance(connection, ClientConnection) and connection.claims is not None
        loop = asyncio.get_running_loop()
        s = self.settings
        session = Session(
            connection.claims,
            topics=self.hub.topics,
            verifier=self.verifier,
            max_subscriptions=s.max_subscriptions,
            control_rate=s.control_rate,
            max_errors=s.max_client_errors,
            now=loop.time(),
        )
        outlet = ConnectionOutlet(connection, s.client_buffer, self._on_overflow, self.delivery)
        connection.outlet = outlet
        remote = _remote(connection)
        subject = session.claims.subject
        opened = time.monotonic()
        self.stats.connections_opened += 1
        self.log.info("connection_opened", "connection opened", subject=subject, remote=remote)
        expiry = self._schedule_expiry(connection, session)
        try:
            if connection.initial_channels:
                effects = session.subscribe_at_connect(connection.initial_channels, loop.time())
                if await self._apply(connection, outlet, effects, subject):
                    return
            async for message in connection:
                if isinstance(message, bytes):
                    await connection.close(
                        protocol.CLOSE_UNSUPPORTED_DATA, "binary frames are not supported"
                    )
                    return
                effects = session.handle(message, loop.time())
                if effects.refreshed:
                    if expiry is not None:
                        expiry.cancel()
                    expiry = self._schedule_expiry(connection, session)
                if await self._apply(connection, outlet, effects, subject):
                    return
        except ConnectionClosed:
            pass
        finally:
            if expiry is not None:
                expiry.cancel()
            outlet.close()
            self.hub.remove(outlet)
            await connection.wait_closed()
            code, reason = close_info(connection)
            self.stats.connections_closed[close_reason(code, reason)] += 1
            self.log.info(
                "connection_closed", "connection closed", subject=subject, remote=remote,
                code=code, reason=reason or None,
                duration_ms=round((time.monotonic() - opened) * 1000),
                frames=outlet.frames_sent,
            )  # fmt: skip

    async def _apply(
        self, connection: ClientConnection, outlet: ConnectionOutlet, effects: Effects, subject: str
    ) -> bool:
        """Carry out a session's effects; True when the connection was closed."""
        for channel in effects.unsubscribe:
            topic, key = split_channel(channel)
            self.hub.unsubscribe(outlet, topic, key)
            self.log.info("unsubscribed", "unsubscribed", subject=subject, channel=channel)
        for channel in effects.subscribe:
            topic, key = split_channel(channel)
            self.hub.subscribe(outlet, topic, key)
            self.log.info("subscribed", "subscribed", subject=subject, channel=channel)
        for reply in effects.replies:
            outlet.send(text_frame(reply))
        if effects.close is not None:
            code, reason = effects.close
            self.log.warning(
                "connection_abuse", "closing abusive connection", subject=subject, reason=reason
            )
            await connection.close(code, reason)
            return True
        return False

    def _schedule_expiry(
        self, connection: ClientConnection, session: Session
    ) -> asyncio.TimerHandle | None:
        expires_at = session.claims.expires_at
        if expires_at is None:
            return None
        delay = max(0.0, expires_at + self.verifier.leeway - time.time())
        return asyncio.get_running_loop().call_later(delay, self._expire, connection)

    def _expire(self, connection: ClientConnection) -> None:
        self._close_soon(connection, protocol.CLOSE_POLICY_VIOLATION, "token expired")

    def _on_overflow(self, outlet: Outlet) -> None:
        assert isinstance(outlet, ConnectionOutlet)
        connection = outlet.connection
        # Called from inside Hub.publish: leave the hub's sets alone until it returns.
        asyncio.get_running_loop().call_soon(self.hub.remove, outlet)
        self.stats.slow_consumer()
        self._slow.warning(
            "slow_consumer", "closing slow consumer",
            subject=connection.claims.subject if connection.claims else None,
            remote=_remote(connection), buffer=outlet.limit,
        )  # fmt: skip
        self._close_soon(connection, protocol.CLOSE_POLICY_VIOLATION, "slow consumer")

    def _close_soon(self, connection: ServerConnection, code: int, reason: str) -> None:
        task = asyncio.get_running_loop().create_task(connection.close(code, reason))
        self._close_tasks.add(task)
        task.add_done_callback(self._close_tasks.discard)

    async def close_connections(self, code: int = protocol.CLOSE_GOING_AWAY) -> None:
        """Close every open connection (1001 by default) and wait for the handshakes."""
        if self.server is None:
            return
        tasks = [
            asyncio.create_task(c.close(code, "server shutting down"))
            for c in self.server.connections
        ]
        if tasks:
            await asyncio.wait(tasks)

    async def stop(self) -> None:
        """Stop listening and wait for every handler to finish."""
        if self.server is not None:
            self.server.close(close_connections=True)
            await self.server.wait_closed()


def close_info(connection: ServerConnection) -> tuple[int, str]:
    """Code and reason of a closed connection, from whichever side closed first.

    websockets' ``close_code`` is the code *received*; when the server closed
    (slow consumer, token expired, shutdown) and the client never answered,
    that would read 1006 and hide why.
    """
    p = connection.protocol
    sent, received = p.close_sent, p.close_rcvd
    if sent is not None and (received is None or not p.close_rcvd_then_sent):
        return sent.code, sent.reason
    if received is not None:
        return received.code, received.reason
    return 1006, ""


def _remote(connection: ServerConnection) -> str | None:
    address = connection.remote_address
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return None
