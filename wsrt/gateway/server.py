"""The gateway: listening, HTTP endpoints, and shutdown.

A request is decided by :func:`~wsrt.gateway.admission.admit` before any
upgrade; admitted connections are served by
:class:`~wsrt.gateway.connection.Connections`.
"""

from __future__ import annotations

import asyncio
import inspect
import weakref
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import parse_qs

from websockets.asyncio.server import Server
from websockets.http11 import Request, Response

from wsrt import protocol, sse
from wsrt.aio import detach
from wsrt.auth import UNKNOWN_KID, Verifier
from wsrt.config import Settings
from wsrt.gateway import ws_adapter
from wsrt.gateway.admission import NOT_FOUND, Admit, Endpoint, Reject, Target, admit
from wsrt.gateway.connection import Connections
from wsrt.gateway.static import Assets
from wsrt.gateway.ws_adapter import Connection
from wsrt.health import Liveness, Readiness
from wsrt.hub import Hub
from wsrt.kafka.replay import Replayer
from wsrt.logs import EventLogger, RateLimited
from wsrt.metrics import Stats
from wsrt.outlet import Record
from wsrt.workers import Siblings

#: ``/ws/check`` is asked by pages of any origin, with the token in the query
#: and no cookies: nothing ambient for another origin to borrow.
_ANY_ORIGIN = (("Access-Control-Allow-Origin", "*"), ("Cache-Control", "no-store"))


class Gateway:
    def __init__(
        self,
        settings: Settings,
        hub: Hub,
        verifier: Verifier,
        readiness: Readiness,
        liveness: Liveness,
        log: EventLogger,
        stats: Stats,
        metrics: Callable[[], tuple[bytes, str]],
        replayer: Replayer,
    ) -> None:
        self.settings = settings
        self.hub = hub
        self.verifier = verifier
        self.readiness = readiness
        self.liveness = liveness
        self.log = log
        self.stats = stats
        self.metrics = metrics
        self.server: Server | None = None
        self.connections = Connections(settings, hub, verifier, log, stats, replayer)
        self._rejected = RateLimited(log)
        self.assets = Assets(console=settings.console)
        #: With WS_WORKERS: the other workers, for /healthz and /metrics of the whole node.
        self.siblings: Siblings | None = None
        self._keepalive: asyncio.Task[None] | None = None
        #: Event streams (/sse): their runs of frames turned into events once for all.
        self.events = sse.Events()
        self.streams: weakref.WeakSet[Connection] = weakref.WeakSet()
        self._heartbeat: asyncio.Task[None] | None = None

    async def start(self) -> Server:
        s = self.settings
        self.server = await ws_adapter.start_server(
            self.connections.handle,
            self._process_request,
            host=s.bind_host,
            port=s.bind_port,
            send_buffer_bytes=s.send_buffer_bytes,
            max_frame_bytes=s.max_frame_bytes,
            close_timeout=s.close_timeout,
            reuse_port=self.siblings is not None,
            deflate=s.compression == "deflate",
        )
        self._heartbeat = asyncio.create_task(self.heartbeat(), name="wsrt-sse-heartbeat")
        if s.ping_interval:
            keepalive = ws_adapter.Keepalive(self.server, s.ping_interval)
            self._keepalive = asyncio.create_task(keepalive.run(), name="wsrt-keepalive")
        return self.server

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    @property
    def connection_count(self) -> int:
        return len(ws_adapter.established(self.server)) if self.server is not None else 0

    # -- HTTP ------------------------------------------------------------------

    def _process_request(
        self, connection: Connection, request: Request
    ) -> Response | Awaitable[Response | None] | None:
        path = request.path.partition("?")[0]
        asset = self.assets.get(path, request.headers.get("If-None-Match"))
        if asset is not None:
            return ws_adapter.response(asset.status, asset.body, None, asset.headers)
        if path == Target.CHANNELS.value and not self.settings.console:
            return ws_adapter.text_response(NOT_FOUND.status, NOT_FOUND.body)
        decision = self._admit(request)
        keys = self.verifier.keys
        unknown = isinstance(decision, Reject) and decision.reason == UNKNOWN_KID
        if unknown and keys is not None and keys.may_refresh():
            # A key the provider rotated in: ask it, then decide.
            return self._after_refresh(connection, request, path)
        return self._respond(connection, request, path, decision)

    def _admit(self, request: Request) -> Endpoint | Reject | Admit:
        return admit(
            request.path,
            request.headers,
            draining=self.readiness.draining,
            allowed_origins=self.settings.allowed_origins,
            verifier=self.verifier,
        )

    async def _after_refresh(
        self, connection: Connection, request: Request, path: str
    ) -> Response | None:
        assert self.verifier.keys is not None
        await self.verifier.keys.refresh(asked=True)
        answer = self._respond(connection, request, path, self._admit(request))
        return await answer if inspect.isawaitable(answer) else answer

    def _respond(
        self,
        connection: Connection,
        request: Request,
        path: str,
        decision: Endpoint | Reject | Admit,
    ) -> Response | Awaitable[Response | None] | None:
        if isinstance(decision, Admit):
            if decision.target is Target.UPGRADE:
                connection.admitted = decision
                return None
            if decision.target is Target.SSE:
                decision = self._stream(connection, request, decision)
                if isinstance(decision, Admit):
                    return None
            else:
                return self._answer_without_upgrade(decision)
        if isinstance(decision, Reject):
            if path not in (Target.UPGRADE.value, Target.SSE.value):
                # A question about an upgrade, not one: counted and logged
                # when the upgrade itself was refused. Only /ws/check is for any origin.
                pairs = _ANY_ORIGIN if path == Target.CHECK.value else ()
                return ws_adapter.text_response(decision.status, decision.body, pairs)
            if decision.reason is not None:
                self.stats.handshakes_rejected[decision.reason] += 1
            if decision.log is not None:
                self._rejected.warning(
                    "handshake_rejected", decision.log, status=decision.status,
                    reason=decision.reason, remote=ws_adapter.remote(connection),
                    origin=(request.headers.get("Origin") or "")[:200] or None,
                )  # fmt: skip
            return ws_adapter.text_response(decision.status, decision.body)
        if decision is Endpoint.HEALTHZ:
            if self.siblings is not None:
                return self._node_health()
            body = self.health()
            return ws_adapter.json_response(200 if self.readiness.ready else 503, body)
        if decision is Endpoint.LIVEZ:
            if self.liveness.alive:
                return ws_adapter.json_response(200, {"status": "ok"})
            silent = f"the Kafka consumer loop has not turned for {self.liveness.silent_for:.0f}s"
            return ws_adapter.json_response(503, {"status": "stalled", "reason": silent})
        data, content_type = self.metrics()
        if self.siblings is not None:
            return self._node_metrics(data, content_type)
        return ws_adapter.response(200, data, content_type)

    def _stream(self, connection: Connection, request: Request, admitted: Admit) -> Admit | Reject:
        """An admitted ``/sse`` request as an event stream, or why it cannot be one (400)."""
        query = parse_qs(request.path.partition("?")[2])
        try:
            plan = sse.plan(admitted.channels, query, request.headers.get("Last-Event-ID"))
        except sse.PlanError as exc:
            return Reject(400, str(exc), "bad_request")
        if self.settings.fanout_mode == "broadcast" and self.connections.replayer.placed:
            for channel, offsets in plan.resumed.items():
                topic = channel.partition(":")[0]
                known = self.connections.replayer.live_positions(topic)
                stray = sorted(set(offsets) - set(known))
                if known and stray:
                    return Reject(
                        400,
                        f"Last-Event-ID names partition {stray[0]} of {topic}, which has "
                        f"partitions {min(known)} to {max(known)}",
                        "bad_request",
                    )
        origin = request.headers.get("Origin")
        connection.admitted = admitted
        connection.sse = sse.Stream(self.events, plan, origin)
        self.streams.add(connection)
        return admitted

    async def heartbeat(self) -> None:
        """A comment line on every event stream each ``WS_SSE_HEARTBEAT_SECONDS``: proxies that end
        idle responses keep them. A stream whose socket took nothing from one beat to the
        next (paused at both, never resumed between) is closed ``1011 stream stalled``, as an
        unanswered ping closes a WebSocket (unless ``WS_PING_INTERVAL_SECONDS`` is 0)."""
        paused_at: dict[Connection, int] = {}
        while True:
            await asyncio.sleep(self.settings.sse_heartbeat)
            still: dict[Connection, int] = {}
            for connection in list(self.streams):
                if not connection.sse_open or connection.sse_closed is not None:
                    continue
                if connection.paused and self.settings.ping_interval:
                    if paused_at.get(connection) == connection.resumes:
                        detach(connection.close(protocol.CLOSE_INTERNAL_ERROR, sse.STALLED))
                        continue
                    still[connection] = connection.resumes
                connection.transport.write(sse.HEARTBEAT)
            paused_at = still

    def health(self) -> dict[str, object]:
        """This process's ``/healthz`` body."""
        r = self.readiness
        body: dict[str, object] = {"status": str(r.status)}
        if r.reason:  # also when ready: a cluster serving every partition with a broker away
            body["reason"] = r.reason
        body["connections"] = self.connection_count
        keys = self.verifier.keys
        if keys is not None and keys.problem:  # the cached keys still verify meanwhile
            body["auth"] = keys.problem
        return body

    async def _node_health(self) -> Response:
        assert self.siblings is not None
        ready, body = await self.siblings.health(self.health())
        return ws_adapter.json_response(200 if ready else 503, body)

    async def _node_metrics(self, own: bytes, content_type: str) -> Response:
        assert self.siblings is not None
        return ws_adapter.response(200, await self.siblings.metrics(own), content_type)

    def _answer_without_upgrade(self, admitted: Admit) -> Response:
        if admitted.target is Target.CHECK:
            return ws_adapter.text_response(
                200, "ok: a WebSocket upgrade with this token and origin would be accepted",
                _ANY_ORIGIN,
            )  # fmt: skip
        # The console's channel picker: only what this token may subscribe to,
        # so a restricted token learns nothing about other topics
        # (docs/design.md, "Authentication").
        claims = admitted.claims
        channels = sorted(t for t in self.hub.topics if claims.allows(t))
        exact = (p for p in claims.channels or () if ":" in p and not any(c in p for c in "*?["))
        channels += sorted(c for c in exact if c.partition(":")[0] in self.hub.topics)
        state = sorted(
            t for t in self.settings.state_topics
            if any(c == t or c.startswith(f"{t}:") for c in channels)
        )  # fmt: skip
        return ws_adapter.json_response(200, {"channels": channels, "state": state})

    def publish(self, records: Sequence[Record]) -> None:
        """Hand a batch to the hub; the outlets it finished are closed."""
        self.connections.publish(records)

    # -- shutdown --------------------------------------------------------------

    async def close_connections(self, code: int = protocol.CLOSE_GOING_AWAY) -> None:
        """Close every open connection (1001 by default) and wait for the handshakes."""
        if self.server is None:
            return
        tasks = [
            asyncio.create_task(c.close(code, protocol.REASON_SHUTDOWN))
            for c in self.server.connections
        ]
        if tasks:
            await asyncio.wait(tasks)

    async def stop(self) -> None:
        """Stop listening and wait for every handler to finish."""
        for task in (self._keepalive, self._heartbeat):
            if task is not None:
                task.cancel()
        if self.server is not None:
            self.server.close(close_connections=True)
            await self.server.wait_closed()
