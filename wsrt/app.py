"""``wsrt serve``: startup → serve until a signal → bounded graceful shutdown.

Signal handlers only set a flag. Shutdown turns ``/healthz`` to 503 at once,
refuses new upgrades, closes every client with 1001 while the consumer makes
its final commit and leaves the group, then stops listening. The whole
sequence is bounded by ``WS_SHUTDOWN_TIMEOUT_SECONDS``: exit 0 when it
completed in time, 1 when the bound (or a second signal) forced it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable

from wsrt import __version__
from wsrt.auth import Verifier
from wsrt.config import Settings
from wsrt.gateway.server import Gateway
from wsrt.health import Liveness, Readiness, Status
from wsrt.hub import Hub
from wsrt.jwks import KeySet
from wsrt.kafka.offsets import Offsets
from wsrt.kafka.replay import Replayer
from wsrt.kafka.snapshot import Snapshots
from wsrt.kafka.source import KafkaSource
from wsrt.logs import EventLogger
from wsrt.metrics import Collector, Metrics, Stats
from wsrt.process import raise_open_files
from wsrt.revocation import RevocationFeed, Revocations
from wsrt.workers import Siblings, WorkerSpec


def _force_exit(log: EventLogger, message: str) -> None:
    log.error("shutdown_forced", message)
    logging.shutdown()
    sys.stderr.flush()
    # Tasks that ignore cancellation (a client or broker that does not answer)
    # must not keep the process past its bound.
    os._exit(1)


def _second_signal_exits(loop: asyncio.AbstractEventLoop, log: EventLogger) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _force_exit, log, "second signal: exiting now")


def _verifier(settings: Settings) -> Verifier:
    """HMAC with WS_AUTH_SECRET, and an identity provider's keys where configured."""
    s = settings
    assert s.auth_secret is not None
    keys = None
    if s.auth_jwks_url or s.auth_public_key_files:
        keys = KeySet(s.auth_jwks_url, s.auth_public_key_files, min_refresh=s.auth_jwks_min_refresh)
    return Verifier(
        s.auth_secret, algorithms=s.auth_algorithms, audience=s.auth_audience,
        leeway=s.auth_leeway, keys=keys, issuer=s.auth_issuer,
    )  # fmt: skip


async def _start_auth(
    settings: Settings, verifier: Verifier, gateway: Gateway, log: EventLogger
) -> list[asyncio.Task[None]]:
    """The identity provider's keys and the revocation topic, read before the first
    connection (each within WS_KAFKA_START_TIMEOUT_SECONDS), then kept up by tasks."""
    tasks = []
    refreshing = await _start_keys(verifier.keys, settings.auth_jwks_refresh, log)
    if refreshing is not None:
        tasks.append(refreshing)
    if settings.auth_revocation_topic:
        revocations = verifier.revocations = Revocations()
        sessions = gateway.connections.sessions
        feed = RevocationFeed(
            settings, revocations, lambda: sessions.close_revoked(revocations), log
        )
        tasks.append(asyncio.create_task(feed.run(), name="wsrt-revocations"))
        try:
            await asyncio.wait_for(feed.loaded.wait(), settings.kafka_start_timeout)
        except TimeoutError:
            log.warning(
                "revocations_late", "serving before the revocation topic was read to its end",
                topic=settings.auth_revocation_topic,
            )  # fmt: skip
    return tasks


async def _start_keys(
    keys: KeySet | None, every: float, log: EventLogger
) -> asyncio.Task[None] | None:
    """Fetch the JWKS before the first token (if it answers), then every ``every`` s; each
    change of its health is logged once."""
    if keys is None or keys.url is None:
        return None
    held = keys

    def told(said: str | None) -> None:
        if said:
            log.warning("jwks_unavailable", "identity provider's keys unavailable", reason=said)
        else:
            log.info("jwks_available", "identity provider's keys fetched", keys=len(held.fetched))

    async def refresh() -> None:
        while True:
            await asyncio.sleep(every)  # pacing the periodic refresh
            await held.refresh()

    keys.changed = told
    await keys.refresh()
    if keys.problem is None:
        told(None)
    return asyncio.create_task(refresh(), name="wsrt-jwks")


def _source_ended(task: asyncio.Task[None], source: KafkaSource, log: EventLogger) -> None:
    """The supervised consumer never ends by itself: if it does, serving on would be silent."""
    if source.stopping:
        return
    exc = None if task.cancelled() else task.exception()
    log.error(
        "kafka_source_died", "the Kafka consumer supervisor ended; exiting",
        error=repr(exc)[:300] if exc else "cancelled",
    )  # fmt: skip
    _force_exit(log, "no consumer: exiting so that the orchestrator restarts this process")


async def serve(
    settings: Settings, hub_factory: Callable[..., Hub] = Hub, worker: WorkerSpec | None = None
) -> int:
    """Serve until SIGTERM or SIGINT, then shut down within the bound; the exit status.

    ``hub_factory`` builds the hub (the benchmarks' baseline plugs in its own).
    ``worker``: this process is one of ``WS_WORKERS`` (:mod:`wsrt.workers`).
    """
    log = EventLogger()
    readiness = Readiness(log)
    loop = asyncio.get_running_loop()
    liveness = Liveness(2 * settings.kafka_stall, loop.time)
    hub = hub_factory(settings.kafka_topics, settings.topic_policies)
    verifier = _verifier(settings)
    stats = Stats()
    collector = Collector(stats, hub, readiness)
    metrics = Metrics(collector)
    offsets = Offsets()
    replayer = Replayer(settings, offsets.positions, log, stats)
    gateway = Gateway(
        settings, hub, verifier, readiness, liveness, log, stats, metrics.render, replayer
    )
    collector.state = state = gateway.connections.state
    source = KafkaSource(
        settings, gateway.publish, readiness, log, stats, liveness, offsets,
        replayer.live_placed, replayer.live_unplaced, gateway.connections,
    )  # fmt: skip
    if state.topics:  # loaded from history once the live stream is positioned
        hold = source.health.hold
        replayer.snapshots = Snapshots(settings, state, replayer.history, offsets, log, hold)

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    if worker is not None:
        gateway.siblings = Siblings(worker, gateway.health, lambda: metrics.render()[0])
        await gateway.siblings.start()
    open_files = raise_open_files()  # each connection is a file
    background = await _start_auth(settings, verifier, gateway, log)
    await gateway.start()
    log.info(
        "listening", "listening", version=__version__, host=settings.bind_host or "*",
        port=gateway.port, mode=settings.fanout_mode, group=settings.group_id,
        topics=",".join(settings.kafka_topics), open_files=open_files,
    )  # fmt: skip
    source.start().add_done_callback(lambda task: _source_ended(task, source, log))

    await stop.wait()
    _second_signal_exits(loop, log)
    readiness.set(Status.DRAINING, "shutting down")
    log.info(
        "shutdown_started", "shutting down", connections=gateway.connection_count,
        timeout_s=settings.shutdown_timeout,
    )  # fmt: skip
    try:
        async with asyncio.timeout(settings.shutdown_timeout):
            await asyncio.gather(gateway.close_connections(), source.stop())
            await gateway.stop()
            for task in background:
                task.cancel()
            await replayer.close()
            if gateway.siblings is not None:
                await gateway.siblings.stop()
    except TimeoutError:
        _force_exit(log, f"shutdown did not finish within {settings.shutdown_timeout}s")
    log.info("shutdown_complete", "shutdown complete")
    return 0


def run(
    settings: Settings, hub_factory: Callable[..., Hub] = Hub, worker: WorkerSpec | None = None
) -> int:
    """Run :func:`serve` on uvloop where available."""
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - platforms without uvloop
        runner = asyncio.Runner()
    with runner:
        return runner.run(serve(settings, hub_factory, worker))
