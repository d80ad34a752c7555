"""``wsrt dev``: the whole thing on one machine, for a newcomer, in one command.

Starts a local Kafka-compatible broker (the embedded one by default), creates
the topics, runs ``wsrt serve`` as a child with a freshly generated secret,
feeds sample messages to every topic, and prints the URL, a ready token,
the ``wsrt tail`` command to try and the console's URL (the token rides in
its fragment, which a browser never sends to the server). Ctrl-C stops everything; the children are
also told to die with this process, so nothing is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from aiokafka.errors import KafkaError

from wsrt.cli.common import ENV_FILE_OPTION, EXIT_USAGE, fail, quiet_libraries, settings_or_exit
from wsrt.client import wait_healthy
from wsrt.config import Settings
from wsrt.errors import WsrtError
from wsrt.process import Child
from wsrt.tokens import mint_token

if TYPE_CHECKING:
    from wsrt.brokers import Broker

#: How long the server may take to answer /healthz 200.
READY_TIMEOUT_SECONDS = 60.0


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        # As servers do: connections in TIME_WAIT do not make a port busy.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def dev(
    port: int = typer.Option(
        8080, "--port", metavar="PORT", help="Port of the WebSocket server on 127.0.0.1."
    ),
    broker: str = typer.Option(
        "embedded", "--broker", metavar="KIND", help="embedded (no Java) or apache."
    ),
    broker_port: int = typer.Option(
        0,
        "--broker-port",
        metavar="PORT",
        help="Broker port (default 9092 when free, else any free port).",
    ),
    rate: float = typer.Option(
        5.0,
        "--rate",
        metavar="PER_SECOND",
        help="Sample messages per second per topic; 0: no feed.",
    ),
    partitions: int = typer.Option(
        3, "--partitions", metavar="N", help="Partitions of each created topic."
    ),
    env_file: Path = ENV_FILE_OPTION,
) -> None:
    """Start a local broker, the demo feed and the server; print a token and what to try."""
    from wsrt.brokers import BrokerError

    if broker not in ("embedded", "apache") or rate < 0 or partitions <= 0:
        fail("--broker is embedded or apache; --rate >= 0; --partitions > 0", EXIT_USAGE)
    settings = settings_or_exit({}, env_file, require_secret=False, warn=False)
    quiet_libraries()
    if not _port_free(port):
        fail(f"port {port} on 127.0.0.1 is in use; pass --port", EXIT_USAGE)
    if not broker_port:
        broker_port = 9092 if _port_free(9092) else 0
    topics = list(settings.kafka_topics)
    secret = secrets.token_urlsafe(32)
    url = f"ws://127.0.0.1:{port}/ws"
    console = f"http://127.0.0.1:{port}/console"

    kafka = _start_broker(broker, broker_port, {t: partitions for t in topics})
    env = {
        **os.environ,
        "WS_AUTH_SECRET": secret,
        "WS_BIND_ADDRESS": f"127.0.0.1:{port}",
        "WS_KAFKA_BROKERS": kafka.bootstrap,
        "WS_KAFKA_TOPICS": ",".join(topics),
        "WS_REPLICA_ID": "dev",
        "WS_CONSOLE": "true",
        # The embedded broker answers a fetch only when its wait expires.
        "WS_KAFKA_FETCH_MAX_WAIT_SECONDS": "0.05",
    }
    server: Child[str] = Child(
        [sys.executable, "-m", "wsrt", "serve", "--env-file", str(env_file)],
        env=env,
        echo=sys.stderr,  # the server's log, as it happens
    ).start()
    code = 0
    try:
        if not wait_healthy(f"http://127.0.0.1:{port}", READY_TIMEOUT_SECONDS, server.alive):
            raise BrokerError("wsrt serve did not become ready; see its log above")
        typer.echo(_banner(url, console, kafka.bootstrap, topics, secret), err=True)
        asyncio.run(_feed(settings.replace(kafka_brokers=(kafka.bootstrap,)), topics, rate, server))
    except WsrtError as exc:
        typer.echo(f"error: {exc}", err=True)
        code = 1
    finally:
        server.stop(timeout=20)
        kafka.stop()
        typer.echo("wsrt dev: stopped", err=True)
    raise typer.Exit(code)


def _start_broker(kind: str, port: int, topics: dict[str, int]) -> Broker:
    from wsrt.brokers import create_topics, make_broker

    kafka = make_broker(kind, port=port or None)
    typer.echo(f"wsrt dev: starting {kafka.describe()} …", err=True)
    try:
        kafka.start()
        asyncio.run(create_topics(kafka.bootstrap, topics))
    except (WsrtError, OSError) as exc:
        kafka.stop()
        fail(f"the broker did not start: {exc}")
    return kafka


def _banner(url: str, console: str, bootstrap: str, topics: list[str], secret: str) -> str:
    """What to try next: the URL, a token, and commands that run as printed."""
    token = mint_token(secret, "dev-user", ttl=24 * 3600)
    return "\n".join(
        [
            "",
            f"  wsrt is running: {url}",
            f"  broker {bootstrap}, topics {', '.join(topics)}",
            f"  secret: {secret}",
            f"  token (24 h): {token}",
            "",
            "  watch a channel:",
            f"    wsrt tail --url {url} --token {token} --channel {topics[0]}",
            "  check it:",
            f"    wsrt check --url {url} --subscribe {topics[-1]} --token {token}",
            "  or open the console in a browser:",
            f"    {console}#token={token}&channels={','.join(topics)}",
            "",
            "  Ctrl-C stops everything.",
            "",
        ]
    )


async def _feed(settings: Settings, topics: list[str], rate: float, server: Child[str]) -> None:
    """Publish samples on every topic until Ctrl-C, SIGTERM, or the server exits."""
    from wsrt.feed import producer, publish, samples

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    # The server exiting on its own also stops the feed: its pidfd becomes
    # readable when it exits.
    pidfd = os.pidfd_open(server.pid)
    loop.add_reader(pidfd, stop.set)
    if rate > 0:
        kafka = producer(settings)
        await kafka.start()
        feeding = asyncio.create_task(publish(kafka, samples(topics, 0), rate * len(topics)))
        await stop.wait()
        # A send waiting on a broker that went away must not hold up Ctrl-C.
        feeding.cancel()
        with contextlib.suppress(asyncio.CancelledError, KafkaError):
            await feeding
        with contextlib.suppress(TimeoutError, KafkaError):
            async with asyncio.timeout(5):
                await kafka.stop()
    await stop.wait()
    loop.remove_reader(pidfd)
    os.close(pidfd)
