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
import shlex
import shutil
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from aiokafka.errors import KafkaError

from wsrt.cli.common import ENV_FILE_OPTION, EXIT_USAGE, fail, quiet_libraries, settings_or_exit
from wsrt.config import Settings, child_environment
from wsrt.errors import WsrtError
from wsrt.process import Child
from wsrt.tokens import mint_token
from wsrt.tools.client import wait_healthy

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
    env = child_environment(
        WS_AUTH_SECRET=secret,
        WS_BIND_ADDRESS=f"127.0.0.1:{port}",
        WS_KAFKA_BROKERS=kafka.bootstrap,
        WS_KAFKA_TOPICS=",".join(topics),
        # The demo's order books and betting lines are state: a subscribe with
        # snapshot: true gets every symbol's book and every event's line at once.
        WS_STATE_TOPICS=",".join(settings.state_topics or DEMO_STATE_TOPICS & set(topics)),
        WS_REPLICA_ID="dev",
        WS_CONSOLE="true",
        # The embedded broker answers a fetch only when its wait expires.
        WS_KAFKA_FETCH_MAX_WAIT_SECONDS="0.02",
    )
    server: Child[str] = Child(
        [sys.executable, "-m", "wsrt", "serve", "--env-file", str(env_file)],
        env=env,
        echo=sys.stderr,  # the server's log, as it happens
    ).start()
    dotenv = DevEnv(Path(".env"))
    code = 0
    try:
        if not wait_healthy(f"http://127.0.0.1:{port}", READY_TIMEOUT_SECONDS, server.alive):
            raise BrokerError("wsrt serve did not become ready; see its log above")
        wrote = dotenv.write(
            {"WS_URL": url, "WS_AUTH_SECRET": secret, "WS_KAFKA_BROKERS": kafka.bootstrap,
             "WS_KAFKA_TOPICS": ",".join(topics)}
        )  # fmt: skip
        banner = _banner(url, console, kafka, topics, secret, wrote)
        feed_settings = settings.replace(kafka_brokers=(kafka.bootstrap,))
        ended = asyncio.run(_feed(feed_settings, topics, rate, server, kafka, banner))
        if ended:
            typer.echo(f"error: {ended}; stopping", err=True)
            code = 1
    except KeyboardInterrupt:  # Ctrl-C while starting
        code = 130
    except WsrtError as exc:
        typer.echo(f"error: {exc}", err=True)
        code = 1
    finally:
        server.stop(timeout=20)
        kafka.stop()
        dotenv.remove()
        typer.echo("wsrt dev: stopped", err=True)
    raise typer.Exit(code)


class DevEnv:
    """The ``.env`` that lets the other commands in this folder reach this dev run.

    Written only where no ``.env`` is, or where the one there is a previous dev
    run's; removed on exit while it is still the one written (it names a secret
    and a broker that are gone once ``wsrt dev`` stops).
    """

    MARK = "# written by wsrt dev"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._text: str | None = None

    def write(self, values: dict[str, str]) -> bool:
        with contextlib.suppress(OSError):
            if self.path.exists() and not self.path.read_text().startswith(self.MARK):
                return False  # the user's own: never touched
            text = (
                f"{self.MARK} for the other wsrt commands in this folder; "
                "removed when it stops\n" + "".join(f"{k}={v}\n" for k, v in values.items())
            )
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # a secret
            with os.fdopen(fd, "w") as f:
                f.write(text)
            self._text = text
            return True
        return False

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            if self._text is not None and self.path.read_text() == self._text:
                self.path.unlink()


#: The demo feed's topics that are state (newest value per key) unless WS_STATE_TOPICS says.
DEMO_STATE_TOPICS = {"order_book", "lines"}


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


def wsrt_command() -> str:
    """How to run this wsrt from a fresh shell: ``wsrt`` when that is this one on PATH,
    else its path (relative to this folder when inside it, as ``.venv/bin/wsrt``)."""
    here = Path(sys.executable).parent / "wsrt"  # the venv's, not the resolved interpreter's
    found = shutil.which("wsrt")
    if found and here.exists() and Path(found).resolve() == here.resolve():
        return "wsrt"
    if not here.exists():
        return f"{shlex.quote(sys.executable)} -m wsrt"
    with contextlib.suppress(ValueError):
        return str(here.absolute().relative_to(Path.cwd()))
    return shlex.quote(str(here.absolute()))


def _banner(
    url: str, console: str, kafka: Broker, topics: list[str], secret: str, dotenv: bool
) -> str:
    """What to try next: the URL, a token, and commands that run as printed, in this order."""
    from wsrt.cli.loadtest import find_k6

    token = mint_token(secret, "dev-user", ttl=24 * 3600)
    wsrt = wsrt_command()
    # With the .env the commands need no URL or secret; without it they carry a token.
    reach = "" if dotenv else f" --url {url} --token {token}"
    lines = [
        "",
        f"  wsrt is running: {url}",
        f"  broker {kafka.describe()}, topics {', '.join(topics)}",
        f"  token (24 h): {token}",
        "  .env written here (WS_URL, WS_AUTH_SECRET, WS_KAFKA_BROKERS, WS_KAFKA_TOPICS) for the"
        if dotenv
        else f"  secret: {secret}   (.env here is not wsrt dev's: left alone)",
        *(["  other wsrt commands in this folder; removed when wsrt dev stops"] if dotenv else []),
        "",
        f"  in another terminal, in {Path.cwd()}:",
        "    # watch a channel (Ctrl-C ends it)",
        f"    {wsrt} tail --channel {topics[0]}{reach}",
        "    # check the server, a real subscription and Kafka",
        f"    {wsrt} check --subscribe {topics[-1]}{reach}"
        + (" --kafka" if dotenv else f" --kafka --brokers {kafka.bootstrap}"),
        "    # publish your own message",
        f'    echo \'{{"hello": "wsrt"}}\' | {wsrt} produce --topic {topics[0]} --file -'
        + ("" if dotenv else f" --brokers {kafka.bootstrap}"),
    ]
    if find_k6(None):
        lines += [
            "    # a short load test with k6",
            f"    {wsrt} loadtest --vus 10 --duration 5s --channel {topics[0]}{reach}",
        ]
    if wsrt != "wsrt":
        lines += [f"    # (or once: source {Path(wsrt).parent}/activate, then plain wsrt …)"]
    lines += [
        "  or open the console in a browser:",
        f"    {console}#token={token}&channels={','.join(topics)}",
        "",
        "  Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines)


async def _feed(
    settings: Settings,
    topics: list[str],
    rate: float,
    server: Child[str],
    kafka: Broker,
    banner: str,
) -> str | None:
    """Print ``banner``, then publish samples on every topic until Ctrl-C or SIGTERM
    (``None``), or until the server or the broker exits on its own (what happened, in words).
    """
    from wsrt.tools.feed import producer, publish, samples

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # Only now: Ctrl-C right after reading it is a clean stop.
    typer.echo(banner, err=True)

    # A child exiting on its own also stops the feed: its pidfd becomes
    # readable when it exits.
    died: list[str] = []
    pidfds = []
    for name, child in (("wsrt serve", server), (kafka.describe(), kafka.child)):
        assert child is not None
        pidfd = os.pidfd_open(child.pid)
        pidfds.append(pidfd)

        def exited(name: str = name, child: Child[str] = child) -> None:
            died.append(f"{name} exited on its own (code {child.poll()})")
            stop.set()

        loop.add_reader(pidfd, exited)
    if rate > 0:
        feed = producer(settings)
        await feed.start()
        feeding = asyncio.create_task(publish(feed, samples(topics, 0), rate * len(topics)))
        await stop.wait()
        # A send waiting on a broker that went away must not hold up Ctrl-C.
        feeding.cancel()
        with contextlib.suppress(asyncio.CancelledError, KafkaError):
            await feeding
        with contextlib.suppress(TimeoutError, KafkaError):
            async with asyncio.timeout(5):
                await feed.stop()
    await stop.wait()
    for pidfd in pidfds:
        loop.remove_reader(pidfd)
        os.close(pidfd)
    return died[0] if died else None
