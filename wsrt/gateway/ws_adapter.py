"""Everything wsrt needs from websockets beyond its documented API, in one place.

Supported: the asyncio implementation of websockets 14 to 17 (pinned in
``pyproject.toml``; ``tests/unit/test_ws_adapter.py`` checks every internal
used here against the installed version). What wsrt relies on:

* ``ServerConnection.pause_writing`` / ``resume_writing`` (asyncio protocol
  callbacks) to learn when a client's transport pauses, for backpressure;
* writing pre-built frames straight to ``connection.transport``, guarded by
  ``connection.protocol.state`` so nothing follows a close frame;
* ``protocol.close_sent`` / ``close_rcvd`` / ``close_rcvd_then_sent`` to tell
  which side closed first;
* ``create_connection`` to plug in the connection class;
* ``connection.send_context()`` and ``protocol.fail()`` to close a connection
  whose keepalive ping went unanswered, as websockets' own keepalive does
  (:class:`Keepalive` replaces that task per connection with one for all);
* ``connection.drain()``, overridden so that no library write waits on a
  client's socket (see :meth:`Connection.drain`);
* ``server.all_connections`` to count connections that are still closing;
* for ``/sse``: ``handshake`` overridden, using ``request_rcvd``,
  ``connection_lost_waiter``, ``request``, ``protocol.reject`` and
  ``send_response`` as websockets' own does, and ``protocol.state`` set to
  ``OPEN`` by hand for an admitted event stream; ``data_received``,
  ``eof_received`` and ``close`` overridden while it is one.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, cast

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.extensions.permessage_deflate import (
    PerMessageDeflate,
    ServerPerMessageDeflateFactory,
)
from websockets.http11 import Request, Response
from websockets.protocol import State

from wsrt.aio import detach
from wsrt.gateway.admission import Admit
from wsrt.outlet import Outlet
from wsrt.sse import Stream

#: The path of event streams (docs/protocol.md, "Server-Sent Events").
SSE_PATH = "/sse"

#: The websockets versions whose internals this module was checked against.
SUPPORTED_MAJOR_VERSIONS = range(14, 18)


class Connection(ServerConnection):
    """A server connection that tells its outlet when the transport pauses."""

    #: SO_SNDBUF for accepted sockets (0 leaves the kernel's autotuning).
    send_buffer_bytes = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.outlet: Outlet | None = None
        self.admitted: Admit | None = None
        #: Called when a write on resume raised (the outlet is finished then).
        self.on_outlet_failed: Callable[[Outlet], None] | None = None
        #: Clear while the transport does not take data (replays wait on it); made
        #: when it first pauses: most connections never do, and an Event costs ~0.8 KB.
        self._writable: asyncio.Event | None = None
        #: A ``/sse`` request: its stream, set by the gateway when it admits the request.
        self.sse: Stream | None = None
        #: Open as an SSE stream: no WebSocket byte goes either way.
        self.sse_open = False
        #: How the server ended an SSE stream (code, reason), as a close frame would say.
        self.sse_closed: tuple[int, str] | None = None
        #: Times the transport took data again after a pause (a stalled stream's does not).
        self.resumes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Bound what the kernel holds for a client that stops reading: with
        # autotuning a socket can buffer megabytes before the transport pauses,
        # which delays the slow-consumer verdict and costs memory per client.
        sock = transport.get_extra_info("socket")
        if self.send_buffer_bytes and sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer_bytes)
        super().connection_made(transport)

    # -- Server-Sent Events: the same connection, answered with an event stream ----------

    async def handshake(self, *args: Any, **kwargs: Any) -> None:
        """websockets' handshake, but a ``/sse`` request the gateway admits opens an event
        stream: its head is written here, and the protocol is marked open so that the
        connection is served like any other. Anything else is websockets' own."""
        await asyncio.wait(
            [self.request_rcvd, self.connection_lost_waiter],
            return_when=asyncio.FIRST_COMPLETED,
        )
        request = self.request
        if request is None or request.path.partition("?")[0] != SSE_PATH:
            return await super().handshake(*args, **kwargs)
        process_request = args[0] if args else kwargs["process_request"]
        answer = process_request(self, request)
        if inspect.isawaitable(answer):
            answer = await answer
        if answer is not None or self.sse is None:  # refused: an HTTP answer like any other
            self.response = answer or self.protocol.reject(500, "not an event stream\n")
            if self.state is State.CONNECTING:
                async with self.send_context(expected_state=State.CONNECTING):
                    self.protocol.send_response(self.response)
            return None
        self.protocol.state = State.OPEN
        self.sse_open = True
        self.transport.write(self.sse.opening)
        return None

    def data_received(self, data: bytes) -> None:
        if not self.sse_open:
            super().data_received(data)
        # An event stream's client has nothing to say: what it sends is not read.

    def eof_received(self) -> None:
        if not self.sse_open:  # an event stream's client is gone: asyncio closes the transport
            super().eof_received()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close; an event stream ends with a ``close`` event saying why (code, reason as a
        close frame would), then the end of its body, then the TCP connection."""
        if not self.sse_open:
            return await super().close(code, reason)
        assert self.sse is not None
        if self.sse_closed is None and not self.transport.is_closing():
            self.sse_closed = (code, reason)
            self.transport.write(self.sse.close_event(code, reason))
            self.transport.close()  # after what it holds is written, or aborted below
        try:
            await asyncio.wait_for(asyncio.shield(self.connection_lost_waiter), self.close_timeout)
        except TimeoutError:
            self.transport.abort()
        return None

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._writable is None:
            self._writable = asyncio.Event()
        self._writable.clear()
        if self.outlet is not None:
            self.outlet.pause()

    def resume_writing(self) -> None:
        super().resume_writing()
        self.resumes += 1
        # Live frames that waited go first; their write may pause the transport
        # again, and a replay woken by the event checks that before it writes.
        outlet = self.outlet
        if outlet is not None and not outlet.resume() and self.on_outlet_failed is not None:
            self.on_outlet_failed(outlet)
        if self._writable is not None and not self.paused:
            self._writable.set()

    async def drain(self) -> None:
        """Never wait for this client's socket to take data.

        websockets calls this after each of its own writes (ping, pong, close)
        and waits while the transport is paused. A client that stops reading
        but keeps TCP open never unpauses it, so a ping would hold up the one
        :class:`Keepalive` task for every connection, and a ``close()`` would
        never reach its close timeout: the socket stayed open for good.
        Backpressure is the outlet's business (``WS_CLIENT_BUFFER``); the
        library's own frames are a few bytes, so they go to the transport's
        buffer, and a close that the client does not answer ends in
        ``transport.abort()`` after ``WS_CLOSE_TIMEOUT_SECONDS``.
        """
        if self.transport.is_closing():  # as the library does: let connection_lost run
            await asyncio.sleep(0)

    def attach(self, outlet: Outlet, on_failed: Callable[[Outlet], None]) -> None:
        """Let ``outlet`` follow this transport's pause state from now on."""
        outlet.paused = self.paused
        self.outlet = outlet
        self.on_outlet_failed = on_failed

    async def writable(self) -> None:
        """Return once the transport takes data (at once when it is not paused).

        It may have paused again by the time the caller runs: callers check
        ``outlet.paused`` in the step in which they write.
        """
        if self._writable is not None:
            await self._writable.wait()

    @property
    def deflate(self) -> bool:
        """Did this client accept permessage-deflate?"""
        return any(isinstance(e, PerMessageDeflate) for e in self.protocol.extensions)

    def frame_writer(self) -> Callable[[bytes], None]:
        """A write function for pre-built frames on this connection's transport."""
        protocol = self.protocol
        write = self.transport.write
        if self.sse is not None:  # an event stream: the outlet hands it events (Stream.encode)

            def write_events(data: bytes) -> None:
                if self.sse_closed is None:
                    write(data)

            return write_events

        def write_frames(data: bytes) -> None:
            # Frames are whole, so they never interleave with the library's own
            # writes (pongs, close); after the close frame nothing more may go out.
            if protocol.state is State.OPEN:
                write(data)

        return write_frames


ProcessRequest = Callable[[Connection, Request], Response | Awaitable[Response | None] | None]


#: Pending connections the kernel queues before accept (capped by net.core.somaxconn).
LISTEN_BACKLOG = 4096


async def start_server(
    handler: Callable[[Connection], Awaitable[None]],
    process_request: ProcessRequest,
    *,
    host: str | None,
    port: int,
    send_buffer_bytes: int,
    max_frame_bytes: int,
    close_timeout: float,
    reuse_port: bool = False,
    deflate: bool = False,
) -> Server:
    connection_class = type("Connection", (Connection,), {"send_buffer_bytes": send_buffer_bytes})
    # Offered with WS_COMPRESSION=deflate: no context takeover, so each frame's compressed
    # bytes are the same for every client (wsrt/deflate.py); websockets only negotiates it
    # and inflates what clients send.
    extensions = (
        [ServerPerMessageDeflateFactory(
            server_no_context_takeover=True, client_no_context_takeover=True
        )] if deflate else None
    )  # fmt: skip
    return await serve(
        handler,  # type: ignore[arg-type]
        host,
        port,
        process_request=process_request,  # type: ignore[arg-type]
        create_connection=connection_class,
        # Pre-built frames are shared by every client: never websockets' per-client deflate.
        compression=None,
        extensions=extensions,
        max_size=max_frame_bytes,
        # One Keepalive task for all connections instead of websockets' one each.
        ping_interval=None,
        close_timeout=close_timeout,
        server_header=None,
        # Workers (WS_WORKERS) share the port; the kernel spreads connections over them.
        reuse_port=reuse_port or None,
        # A reconnect storm (every client of a restarted replica at once) must queue,
        # not see its SYNs dropped and retried seconds later: asyncio's default is 100.
        backlog=LISTEN_BACKLOG,
    )


class Keepalive:
    """Ping every open connection each ``interval`` seconds from one task, and close
    (1011 ``keepalive ping timeout``) one whose previous ping is still unanswered.

    What websockets' ``ping_interval`` does with a task and a timer per
    connection (about 1.6 KB each), done for all of them by one. A round
    yields to the event loop every :attr:`SLICE` connections, so live
    delivery is never held up by thousands of pings at once.
    """

    SLICE = 256

    def __init__(self, server: Server, interval: float) -> None:
        self.server = server
        self.interval = interval
        #: The pong each connection owes for its last ping (a closed one is forgotten).
        self._owed: weakref.WeakKeyDictionary[ServerConnection, asyncio.Future[float]] = (
            weakref.WeakKeyDictionary()
        )

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            open_now = list(self.server.connections)
            owed, self._owed = self._owed, weakref.WeakKeyDictionary()
            for index, connection in enumerate(open_now):
                if connection.protocol.state is not State.OPEN or getattr(
                    connection, "sse_open", False
                ):
                    continue  # an event stream has its heartbeat instead (wsrt/gateway/server.py)
                pong = owed.get(connection)
                if pong is not None and not pong.done():
                    detach(self._fail(connection))
                    continue
                try:
                    self._owed[connection] = cast(asyncio.Future[float], await connection.ping())
                except Exception:  # closing meanwhile: nothing to keep alive
                    continue
                if index % self.SLICE == self.SLICE - 1:
                    await asyncio.sleep(0)

    @staticmethod
    async def _fail(connection: ServerConnection) -> None:
        async with connection.send_context():
            connection.protocol.fail(1011, "keepalive ping timeout")


def established(server: Server) -> list[ServerConnection]:
    """Connections past the handshake that are not closed yet: open, or closing.

    websockets' ``server.connections`` leaves out those in their closing
    handshake, and a client that reads nothing can stay there for the whole
    close timeout, holding a socket and memory: it still counts.
    """
    return [c for c in server.all_connections if c.protocol.state in (State.OPEN, State.CLOSING)]


def close_info(connection: ServerConnection) -> tuple[int, str, bool]:
    """Code and reason of a closed connection, from whichever side closed first, and
    whether that was the server.

    websockets' ``close_code`` is the code *received*; when the server closed
    (slow consumer, token expired, shutdown) and the client never answered,
    that would read 1006 and hide why.
    """
    if isinstance(connection, Connection) and connection.sse_open:
        if connection.sse_closed is not None:
            return (*connection.sse_closed, True)
        return 1001, "", False  # an event stream's client went away (EventSource.close())
    p = connection.protocol
    sent, received = p.close_sent, p.close_rcvd
    if sent is not None and (received is None or not p.close_rcvd_then_sent):
        return sent.code, sent.reason, True
    if received is not None:
        return received.code, received.reason, False
    return 1006, "", False


def forget_handshake_headers(connection: ServerConnection) -> None:
    """Drop the opening handshake's header maps, read once by admission (~2.5 KB each)."""
    for message in (connection.request, connection.response):
        if message is not None:
            message.headers = Headers()


def remote(connection: ServerConnection) -> str | None:
    address = connection.remote_address
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return None


def response(
    status: int,
    body: bytes,
    content_type: str | None,
    pairs: tuple[tuple[str, str], ...] = (),
    **headers: str,
) -> Response:
    """A response with ``Content-Type`` (unless ``None``), the header ``pairs``, then ``headers``.

    ``Cache_Control="no-store"`` is ``Cache-Control: no-store``. websockets
    closes the TCP connection after any answer but an upgrade, so the
    response says so, and how long its body is, as websockets' own
    ``reject()`` does.
    """
    import http

    phrase = http.HTTPStatus(status).phrase
    all_pairs = [
        *((("Content-Type", content_type),) if content_type is not None else ()),
        *pairs,
        *((k.replace("_", "-"), v) for k, v in headers.items()),
        *((("Content-Length", str(len(body))),) if status != 304 else ()),
        ("Connection", "close"),
    ]
    return Response(status, phrase, Headers(all_pairs), body)


def json_response(status: int, body: dict[str, Any]) -> Response:
    return response(
        status, orjson.dumps(body) + b"\n", "application/json", Cache_Control="no-store"
    )


def text_response(status: int, text: str, pairs: tuple[tuple[str, str], ...] = ()) -> Response:
    return response(status, text.encode() + b"\n", "text/plain; charset=utf-8", pairs)
