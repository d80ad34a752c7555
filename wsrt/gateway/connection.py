"""Admitted WebSocket connections: the per-connection loop, delivery verdicts, closes.

Each connection gets an :class:`~wsrt.outlet.Outlet` writing pre-built frames to
its transport and a :class:`~wsrt.session.Session` that answers its control
messages; the loop applies the session's effects. :meth:`Connections.publish`
hands a batch to the hub and closes the outlets the hub reports finished:
1008 ``slow consumer`` for an overflow, 1011 for a write that raised. Each
close runs in its own task, once.

A subscription with a start field is installed behind a
:class:`~wsrt.hub.Gate` at once (so nothing live from that moment on is
missed) and replayed by the :class:`~wsrt.kafka.replay.Replayer` in a task
of the connection, cancelled when the channel is unsubscribed or the
connection ends.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence

import jwt
import orjson
from websockets.exceptions import ConnectionClosed

from wsrt import protocol
from wsrt.aio import detach
from wsrt.auth import Claims, Verifier
from wsrt.config import Settings
from wsrt.deflate import Deflater
from wsrt.gateway import ws_adapter
from wsrt.gateway.ws_adapter import Connection
from wsrt.hub import Gate, Hub
from wsrt.jwks import ASYMMETRIC_ALGORITHMS
from wsrt.kafka.replay import Replayer, ReplayJob
from wsrt.logs import EventLogger, RateLimited
from wsrt.metrics import Stats, close_reason
from wsrt.outlet import SLOW_CONSUMER, Outlet, Record
from wsrt.protocol import ProtocolError, Since
from wsrt.revocation import Revocations
from wsrt.session import Effects, Replay, Session
from wsrt.state import State
from wsrt.wire import text_frame

#: Log lines a connection's own control messages may cause: a burst (a client
#: subscribing its channels at connect), then a few a second, then a count.
CONTROL_LOG_BURST = 20
CONTROL_LOG_PER_S = 5


def _opening(connection: Connection, session: Session, now: float) -> Effects | None:
    """What a connection subscribes as it opens: an event stream's plan, or ``?channels=``."""
    stream, admitted = connection.sse, connection.admitted
    if stream is not None and stream.plan is not None:
        return session.subscribe_all(stream.plan.subscribes, now)
    if admitted is not None and admitted.channels:
        return session.subscribe_at_connect(admitted.channels, now)
    return None


def _encoding(
    outlet: Outlet,
    connection: Connection,
    compressor: Callable[[], Callable[[bytes], bytes]] | None,
) -> None:
    """How frames reach this client: as built, deflated (if it accepted), or as events of
    its stream (counted as sent in those bytes)."""
    if compressor is not None and connection.deflate:
        outlet.compress = compressor()
    if connection.sse is not None:
        outlet.compress = connection.sse.encode


def _opened(
    stats: Stats, log: EventLogger, subject: str, remote: str | None, sse: bool, outlet: Outlet
) -> None:
    stats.connections_opened += 1
    if sse:
        stats.sse_opened += 1
    log.info(
        "connection_opened", "connection opened", subject=subject, remote=remote,
        transport="sse" if sse else "websocket",
        compression="deflate" if outlet.compress is not None else None,
    )  # fmt: skip


def _expiry(
    connection: Connection,
    session: Session,
    leeway: float,
    close: Callable[[Connection, int, str], None],
) -> asyncio.TimerHandle | None:
    """The timer that closes a connection (1008 ``token expired``) when its token expires."""
    expires_at = session.claims.expires_at
    if expires_at is None:
        return None
    delay = max(0.0, expires_at + leeway - time.time())
    code, reason = protocol.CLOSE_POLICY_VIOLATION, protocol.REASON_TOKEN_EXPIRED
    return asyncio.get_running_loop().call_later(delay, close, connection, code, reason)


class Releases:
    """The timer that wakes the hub when a ``max_rate`` value held back may go."""

    def __init__(self, hub: Hub, finished: Callable[[Outlet], None]) -> None:
        self.hub = hub
        self.finished = finished
        self.timer: asyncio.TimerHandle | None = None

    def schedule(self) -> None:
        if self.timer is not None:
            return
        due = self.hub.next_release()
        if due is not None:
            delay = max(0.0, due - time.monotonic())
            self.timer = asyncio.get_running_loop().call_later(delay, self._wake)

    def _wake(self) -> None:
        self.timer = None
        for outlet in self.hub.release(time.monotonic()):
            self.finished(outlet)
        self.schedule()


async def key_for_refresh(verifier: Verifier, message: str) -> None:
    """A ``refresh`` with a provider token of a ``kid`` not held: fetch the JWKS first (as
    an upgrade would), so the session's synchronous verification finds a rotated key."""
    keys = verifier.keys
    if keys is None or '"refresh"' not in message or not keys.may_refresh():
        return
    try:
        given = orjson.loads(message).get("token")
        header = jwt.get_unverified_header(given) if isinstance(given, str) else {}
    except (orjson.JSONDecodeError, AttributeError, jwt.PyJWTError):
        return  # the session answers what is wrong with it
    kid, algorithm = header.get("kid"), header.get("alg")
    if isinstance(kid, str) and algorithm in ASYMMETRIC_ALGORITHMS and not keys.key(kid, algorithm):
        await keys.refresh(asked=True)


def compressor(settings: Settings) -> Callable[[], Callable[[bytes], bytes]] | None:
    """WS_COMPRESSION=deflate: each client's compressor: one shared :class:`Deflater`, each
    frame compressed once. (``WSRT_BENCH_DEFLATE_PER_CLIENT=1``: one each, what ``wsrt
    bench -s filters`` compares that with, as a per-connection compressor would.)"""
    if settings.compression != "deflate":
        return None
    if os.environ.get("WSRT_BENCH_DEFLATE_PER_CLIENT") == "1":
        return lambda: Deflater(keep=0).chunk
    shared = Deflater()
    return lambda: shared.chunk


class Sessions:
    """Every open connection's session: whose token a revocation names."""

    def __init__(self, log: EventLogger, close: Callable[[Connection, int, str], None]) -> None:
        self.log = log
        self.close = close
        self.open: dict[Connection, Session] = {}

    def close_revoked(self, revocations: Revocations) -> None:
        """Close (1008 ``token revoked``) each connection whose token is revoked now."""
        for connection, session in list(self.open.items()):
            c = session.claims
            if revocations.revoked(c.subject, c.token_id, c.issued_at):
                del self.open[connection]
                self.log.info(
                    "token_revoked", "closing a connection whose token was revoked",
                    subject=c.subject, remote=ws_adapter.remote(connection),
                )  # fmt: skip
                self.close(
                    connection, protocol.CLOSE_POLICY_VIOLATION, protocol.REASON_TOKEN_REVOKED
                )


class Connections:
    def __init__(
        self,
        settings: Settings,
        hub: Hub,
        verifier: Verifier,
        log: EventLogger,
        stats: Stats,
        replayer: Replayer,
    ) -> None:
        self.settings = settings
        self.hub = hub
        self.replayer = replayer
        self.verifier = verifier
        #: The newest value per key of WS_STATE_TOPICS, kept by :meth:`publish`.
        self.state = State(settings.state_topics, settings.state_max_keys, settings.state_max_bytes)
        self._evicted = RateLimited(log)
        self.log = log
        self.stats = stats
        self._slow = RateLimited(log, interval=1.0)
        #: Wakes the hub when a ``max_rate`` value held back may go.
        self.releases = Releases(hub, self._finished)
        #: Every open connection's session (whose token a revocation may name).
        self.sessions = Sessions(log, self._close_soon)
        #: WS_COMPRESSION=deflate: what compresses a client's frames, if it accepted.
        self.compressor = compressor(settings)

    # -- delivery --------------------------------------------------------------

    def publish(self, records: Sequence[Record]) -> None:
        """Hand a batch to the hub, then close what it reports finished.

        The state topics' store takes the batch in this same step, so it always
        stands where the live stream does (docs/design.md, "State on subscribe").
        """
        if self.state.topics:
            for topic, evicted in self.state.apply(records).items():
                kept = self.state.topics[topic]
                self._evicted.warning(
                    "state_evicted", "state topic over its bounds; evicted the oldest keys",
                    topic=topic, evicted=evicted, keys=len(kept.entries), bytes=kept.bytes,
                )  # fmt: skip
        for outlet in self.hub.publish(records):
            self._finished(outlet)
        if self.hub.waiting:
            self.releases.schedule()

    # -- partitions that move (shared mode) ---------------------------------------

    def revoked(self, partition: tuple[str, int], next_offset: int) -> None:
        """Tell the subscribers that ``partition`` is served by another replica now."""
        topic, p = partition

        def notice(channel: str, floor: int | None) -> bytes:
            at = next_offset if floor is None else max(next_offset, floor)
            return text_frame(protocol.revoked_notice(channel, p, at))

        for outlet in self.hub.tell(topic, p, notice):
            self._finished(outlet)

    def assigned(self, partition: tuple[str, int], start: int) -> None:
        """Tell the subscribers that ``partition`` is served here now, from ``start``."""
        topic, p = partition

        def notice(channel: str, floor: int | None) -> bytes:
            return text_frame(protocol.assigned_notice(channel, p, start))

        for outlet in self.hub.tell(topic, p, notice):
            self._finished(outlet)

    def gap(self, partition: tuple[str, int], first: int, last: int, reason: str) -> None:
        """Tell the subscribers that ``first``..``last`` of ``partition`` will not come."""
        topic, p = partition

        def notice(channel: str, floor: int | None) -> bytes:
            return text_frame(protocol.gap_notice(channel, p, first, last, reason))

        for outlet in self.hub.tell(topic, p, notice):
            self._finished(outlet)

    def _finished(self, outlet: Outlet) -> None:
        self.hub.remove(outlet)
        connection = outlet.peer
        assert isinstance(connection, Connection)
        subject = connection.admitted.claims.subject if connection.admitted else None
        if outlet.verdict == SLOW_CONSUMER:
            self.stats.slow_consumer()
            self._slow.warning(
                "slow_consumer", "closing slow consumer", subject=subject,
                remote=ws_adapter.remote(connection), buffer=outlet.limit,
            )  # fmt: skip
            self._close_soon(
                connection, protocol.CLOSE_POLICY_VIOLATION, protocol.REASON_SLOW_CONSUMER
            )
        else:
            self.log.error(
                "write_failed", "writing to a client failed; closing it", subject=subject,
                remote=ws_adapter.remote(connection), error=repr(outlet.error)[:300],
            )  # fmt: skip
            self._close_soon(
                connection, protocol.CLOSE_INTERNAL_ERROR, protocol.REASON_WRITE_FAILED
            )

    def _close_soon(self, connection: Connection, code: int, reason: str) -> None:
        detach(connection.close(code, reason))

    # -- WebSocket -------------------------------------------------------------

    def _session(
        self, connection: Connection, claims: Claims, now: float
    ) -> tuple[Session, Outlet]:
        """A new connection's control state and outbound queue (attached to it)."""
        s = self.settings
        session = Session(
            claims, topics=self.hub.topics, verifier=self.verifier,
            max_subscriptions=s.max_subscriptions, control_rate=s.control_rate,
            max_errors=s.max_client_errors, error_window=s.client_error_window, now=now,
            max_channel_bytes=s.max_channel_bytes, state_topics=frozenset(s.state_topics),
            max_filter_bytes=s.max_filter_bytes,
        )  # fmt: skip
        outlet = Outlet(connection.frame_writer(), s.client_buffer, self.stats.delivery, connection)
        _encoding(outlet, connection, self.compressor)
        connection.attach(outlet, on_failed=self._finished)
        return session, outlet

    async def handle(self, connection: Connection) -> None:
        admitted = connection.admitted
        assert admitted is not None
        # Held for the connection's life otherwise: the handshake's headers (~2.5 KB).
        # (The request itself must stay: websockets tells the handshake by it.)
        ws_adapter.forget_handshake_headers(connection)
        loop = asyncio.get_running_loop()
        session, outlet = self._session(connection, admitted.claims, loop.time())
        self.sessions.open[connection] = session
        # What the client's own requests log (subscribe, unsubscribe) is at
        # DEBUG: a burst of CONTROL_LOG_BURST, then CONTROL_LOG_PER_S a second.
        control_log = RateLimited(self.log, interval=1 / CONTROL_LOG_PER_S, burst=CONTROL_LOG_BURST)
        subject, remote = session.claims.subject, ws_adapter.remote(connection)
        opened = time.monotonic()
        stream = connection.sse
        _opened(self.stats, self.log, subject, remote, stream is not None, outlet)
        expiry = _expiry(connection, session, self.verifier.leeway, self._close_soon)
        replays: dict[str, asyncio.Task[None]] = {}
        try:
            effects = _opening(connection, session, loop.time())
            if effects is not None and await self._apply(
                connection, outlet, effects, session, replays, control_log
            ):
                return
            async for message in connection:
                if isinstance(message, bytes):
                    await connection.close(
                        protocol.CLOSE_UNSUPPORTED_DATA, "binary frames are not supported"
                    )
                    return
                await key_for_refresh(self.verifier, message)
                effects = session.handle(message, loop.time())
                if effects.refreshed:
                    if expiry is not None:
                        expiry.cancel()
                    expiry = _expiry(connection, session, self.verifier.leeway, self._close_soon)
                if await self._apply(connection, outlet, effects, session, replays, control_log):
                    return
        except ConnectionClosed:
            pass
        finally:
            if expiry is not None:
                expiry.cancel()
            for task in replays.values():
                task.cancel()
            outlet.close()
            self.hub.remove(outlet)
            self.sessions.open.pop(connection, None)
            await connection.wait_closed()
            code, reason, by_server = ws_adapter.close_info(connection)
            self.stats.connections_closed[close_reason(code, reason, by_server)] += 1
            if stream is not None:
                self.stats.sse_closed += 1
            self.log.info(
                "connection_closed", "connection closed", subject=subject, remote=remote,
                code=code, reason=reason or None,
                duration_ms=round((time.monotonic() - opened) * 1000), frames=outlet.frames_sent,
            )  # fmt: skip

    async def _apply(
        self,
        connection: Connection,
        outlet: Outlet,
        effects: Effects,
        session: Session,
        replays: dict[str, asyncio.Task[None]],
        control_log: RateLimited,
    ) -> bool:
        """Carry out a session's effects; True when the connection was closed."""
        subject = session.claims.subject
        for channel in effects.unsubscribe:
            replay = replays.pop(channel.name, None)
            if replay is not None:
                replay.cancel()
            self.hub.unsubscribe(outlet, channel.topic, channel.key)
            control_log.log(
                logging.DEBUG, "unsubscribed", "unsubscribed", subject=subject,
                channel=channel.name,
            )  # fmt: skip
        for channel in effects.subscribe:
            self.hub.subscribe(
                outlet, channel.topic, channel.key, match=session.matches.get(channel.name),
                rate=session.rates.get(channel.name),
            )  # fmt: skip
            control_log.log(
                logging.DEBUG, "subscribed", "subscribed", subject=subject, channel=channel.name
            )
        for request in effects.replay:
            self._start_replay(connection, outlet, session, request, replays)
        for reply in effects.replies:
            if not outlet.send(text_frame(reply)):
                self._finished(outlet)
                return True
        # orjson's bytes keep a 4 KB buffer: the handler holds its last effects
        # while it waits for the next message, so they must not hold the replies.
        effects.replies.clear()
        if effects.close is not None:
            code, reason = effects.close
            self.log.warning(
                "connection_abuse", "closing abusive connection", subject=subject, reason=reason
            )
            await connection.close(code, reason)
            return True
        return False

    def _start_replay(
        self,
        connection: Connection,
        outlet: Outlet,
        session: Session,
        request: Replay,
        replays: dict[str, asyncio.Task[None]],
    ) -> None:
        """Hold the channel's live records from now on, and replay history up to them.

        An empty ``since`` is answered at once with where the live stream stands (once it
        is placed): nothing to replay, so no gate, slot or consumer; the policy applies.
        """
        channel = request.channel
        live_then = self.replayer.live_positions(channel.topic)
        if isinstance(request.start, Since) and not request.start.offsets and self.replayer.placed:
            self.hub.subscribe(
                outlet, channel.topic, channel.key, match=session.matches.get(channel.name),
                rate=session.rates.get(channel.name),
            )  # fmt: skip
            answer = protocol.subscribed_reply(channel.name, request.id, live_then)
            if not outlet.send(text_frame(answer)):
                self._finished(outlet)
            return
        # Before the live stream is positioned, hold every partition (kafka/replay.py).
        gate = Gate(
            channel.key, live_then if self.replayer.placed else None,
            session.matches.get(channel.name), session.rates.get(channel.name),
        )  # fmt: skip
        self.hub.subscribe(outlet, channel.topic, channel.key, gate)

        def reply(data: bytes) -> bool:
            if outlet.send(text_frame(data)):
                return True
            self._finished(outlet)
            return False

        job = ReplayJob(
            outlet, connection.writable, channel, request.start, request.id, gate, live_then,
            reply, lambda: self.hub.settle(outlet, channel.topic, channel.key),
            subject=session.claims.subject,
        )  # fmt: skip
        self.replayer.track(job)
        task = asyncio.get_running_loop().create_task(
            self._replay(job, session, replays), name=f"wsrt-replay-{channel.name[:100]}"
        )
        replays[channel.name] = task

    async def _replay(
        self, job: ReplayJob, session: Session, replays: dict[str, asyncio.Task[None]]
    ) -> None:
        channel = job.channel
        try:
            await self.replayer.run(job)
        except ProtocolError as exc:  # Kafka showed the request to be wrong: nothing was sent
            session.forget(channel.name)
            self.hub.unsubscribe(job.outlet, channel.topic, channel.key)
            job.reply(exc.reply())
        except Exception as exc:  # a bug: this client only, closed and logged
            self.log.error(
                "replay_failed", "replay failed; closing the connection", subject=job.subject,
                channel=channel.name, error=repr(exc)[:300],
            )  # fmt: skip
            peer = job.outlet.peer
            assert isinstance(peer, Connection)
            self._close_soon(peer, protocol.CLOSE_INTERNAL_ERROR, protocol.REASON_WRITE_FAILED)
        finally:
            if replays.get(channel.name) is asyncio.current_task():
                del replays[channel.name]
