"""``wsrt check``: probe a deployment and exit 0 only when every check passes."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import typer
from aiokafka.errors import KafkaError
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from wsrt.cli.common import (
    ENV_FILE_OPTION,
    EXIT_USAGE,
    SECRET_FILE_OPTION,
    SECRET_OPTION,
    client_token,
    fail,
    quiet_libraries,
    read_secret,
    setting,
    settings_or_exit,
)
from wsrt.config import Settings, tool_setting
from wsrt.tools.client import connect, explain_refusal, http_get, scrape, wait_healthy
from wsrt.tools.events import SseClient, http_base


@dataclass
class Result:
    name: str
    ok: bool
    detail: str

    def line(self, color: bool = False) -> str:
        """``ok    name  detail``; on a terminal ok is green and FAIL red."""
        mark = "ok  " if self.ok else "FAIL"
        if color:
            mark = typer.style(mark, fg="green" if self.ok else "red", bold=not self.ok)
        return f"{mark}  {self.name:<11} {self.detail}"


def check_http(settings: Settings, path: str, timeout: float) -> Result:
    name = path.strip("/")
    try:
        status, body, ms = http_get(settings.http_url + path, timeout)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return Result(name, False, f"{settings.http_url}{path} unreachable: {reason}")
    try:
        doc = json.loads(body)
    except ValueError:
        doc = {}
    state = doc.get("status", "")
    detail = f"{status} {state}".strip()
    if doc.get("reason"):
        detail += f": {doc['reason']}"
    if "connections" in doc:
        detail += f", {doc['connections']} connections"
    return Result(name, status == 200, f"{detail} ({ms:.0f} ms)")


async def check_subscribe(settings: Settings, channel: str, token: str, seconds: float) -> Result:
    name = "subscribe"
    started = time.perf_counter()
    try:
        async with asyncio.timeout(seconds), connect(settings.url, token, [channel]) as ws:
            async for frame in ws:
                msg = json.loads(frame)
                if msg.get("type") == "error":
                    return Result(
                        name, False, f"{channel}: {msg.get('code')}: {msg.get('message')}"
                    )
                if msg.get("type") == "message":
                    ms = (time.perf_counter() - started) * 1000
                    where = f"{msg['partition']}:{msg['offset']}"
                    return Result(name, True, f"{channel}: message at {where} after {ms:.0f} ms")
            return Result(name, False, f"{channel}: closed {ws.close_code} {ws.close_reason}")
    except InvalidStatus as exc:
        return Result(name, False, await explain_refusal(exc, settings.url, token, seconds))
    except TimeoutError:
        return Result(name, False, f"{channel}: no message within {seconds:g}s")
    except (OSError, InvalidHandshake, ConnectionClosed) as exc:
        return Result(name, False, f"cannot connect to {settings.url}: {exc}")


async def check_sse(
    settings: Settings, channel: str, token: str, seconds: float, message: bool
) -> Result:
    """``GET /sse`` for ``channel``: answered with an event stream that subscribes it (and
    with ``message``, one message arrives), through whatever stands in front."""
    name, started = "sse", time.perf_counter()
    headers = {"Authorization": f"Bearer {token}"}
    client = None
    try:
        async with asyncio.timeout(seconds):
            client = await SseClient.open(http_base(settings.url), headers, channels=channel)
            if client.status != 200:
                said = client.body.decode(errors="replace").strip()
                return Result(name, False, f"/sse answered {client.status} {said}".rstrip())
            event = (await client.until("message" if message else "subscribed"))[-1]
        ms = (time.perf_counter() - started) * 1000
        if not message:
            return Result(name, True, f"{channel}: subscribed after {ms:.0f} ms")
        where = f"{event.json()['partition']}:{event.json()['offset']}"
        return Result(name, True, f"{channel}: message at {where} after {ms:.0f} ms")
    except TimeoutError:
        what = "no message" if message else "no subscribed event"
        return Result(name, False, f"{channel}: {what} within {seconds:g}s over /sse")
    except (OSError, EOFError) as exc:
        return Result(name, False, f"cannot read {http_base(settings.url)}/sse: {exc}")
    finally:
        if client is not None:
            await client.close()


async def check_kafka(settings: Settings, seconds: float) -> Result:
    from wsrt.kafka import options

    where = ",".join(settings.kafka_brokers)
    client = options.metadata_client(settings.replace(kafka_request_timeout=seconds))
    try:
        async with asyncio.timeout(seconds):
            await client.bootstrap()
            seen = await options.discover(client, settings.kafka_topics)
    except (KafkaError, OSError, TimeoutError) as exc:
        return Result("kafka", False, await options.explain(exc, settings))
    finally:
        await client.close()
    if seen.denied:
        return Result("kafka", False, f"{where}: {options.denied_words(seen.denied, settings)}")
    if seen.missing:
        return Result("kafka", False, f"{where}: missing topic(s) {', '.join(seen.missing)}")
    outage, note = options.replication_words(seen.replication)
    if outage:
        return Result("kafka", False, f"{where}: {outage}")
    parts = [f"{topic} {len(seen.found[topic])}p" for topic in settings.kafka_topics]
    return Result("kafka", True, f"{where}: {', '.join(parts)}" + (f" ({note})" if note else ""))


def check_registry(settings: Settings, timeout: float) -> Result:
    """The Schema Registry of the schema formats answers (with its subjects)."""
    from wsrt.kafka.registry import RegistryUnavailable, client

    registry = client(settings, timeout)
    try:
        subjects = registry.subjects()
    except RegistryUnavailable as exc:
        return Result("registry", False, str(exc))
    return Result("registry", True, f"{registry.url}: {subjects} subject(s)")


def check_metrics(settings: Settings, interval: float, timeout: float) -> list[Result]:
    """Two scrapes ``interval`` apart: what on-call wants to see first."""
    from wsrt.metrics import total

    url = settings.http_url + "/metrics"
    try:
        first = scrape(settings.http_url, timeout)
        time.sleep(interval)  # two scrapes give rates
        second = scrape(settings.http_url, timeout)
    except (OSError, ValueError) as exc:
        return [Result("metrics", False, f"{url} unreachable: {getattr(exc, 'reason', exc)}")]

    def rate(name: str) -> float:
        return (total(second, name) - total(first, name)) / interval

    lags = {dict(k[1]).get("topic", "?") + "[" + dict(k[1]).get("partition", "?") + "]": v
            for k, v in second.items() if k[0] == "wsrt_kafka_lag"}  # fmt: skip
    worst = max(lags.items(), key=lambda kv: kv[1], default=("-", 0.0))
    slow = total(second, "wsrt_slow_consumer_disconnects_recent")
    lines = [
        ("connections", f"{total(second, 'wsrt_connections'):.0f} open"),
        ("delivered", f"{rate('wsrt_frames_delivered_total'):.0f} frames/s"),
        ("consumed", f"{rate('wsrt_kafka_messages_total'):.0f} messages/s"),
        ("lag", f"{sum(lags.values()):.0f} messages (max {worst[0]} {worst[1]:.0f})"),
        ("slow", f"{slow:.0f} slow-consumer disconnects in the last 5 min"),
        ("skipped", f"{total(second, 'wsrt_kafka_skipped_records_total'):.0f} records skipped"),
        (
            "restarts",
            f"{total(second, 'wsrt_kafka_consumer_restarts_total'):.0f} consumer restarts",
        ),
    ]
    return [Result(name, True, detail) for name, detail in lines]


def check(
    url: str = setting(
        "WS_URL",
        "--url",
        metavar="URL",
        help="Server WebSocket URL; /healthz and /metrics are beside it.",
    ),
    subscribe: str = typer.Option(
        None,
        "--subscribe",
        metavar="CHANNEL",
        help="Also subscribe to this channel and wait for one message.",
    ),
    kafka: bool = typer.Option(
        False,
        "--kafka",
        help="Also check the brokers, that every topic exists, and the Schema Registry "
        "(when WS_SCHEMA_REGISTRY_URL is set).",
    ),
    sse: bool = typer.Option(
        False,
        "--sse",
        help="Also open GET /sse (Server-Sent Events) for the --subscribe channel (else the "
        "first of WS_KAFKA_TOPICS) and wait for its subscribed event (with --subscribe: a "
        "message).",
    ),
    metrics: bool = typer.Option(
        False, "--metrics", help="Also show connections, delivery rate, lag, slow consumers."
    ),
    interval: float = typer.Option(
        2.0, "--interval", metavar="SECONDS", help="Seconds between the two --metrics scrapes."
    ),
    timeout: float = typer.Option(
        5.0, "--timeout", metavar="SECONDS", help="Seconds each check may take."
    ),
    wait: float = typer.Option(
        0,
        "--wait",
        metavar="SECONDS",
        help="First wait up to this many seconds for /healthz to answer 200.",
    ),
    token: str = setting("WS_TOKEN", "--token", metavar="JWT", help="JWT for --subscribe."),
    secret: str = SECRET_OPTION,
    secret_file: str = SECRET_FILE_OPTION,
    subject: str = typer.Option(
        "wsrt-check", "--subject", metavar="SUB", help="sub of a minted token."
    ),
    brokers: str = setting("WS_KAFKA_BROKERS", "--brokers", metavar="HOST:PORT,…"),
    topics: str = setting(
        "WS_KAFKA_TOPICS", "--topics", metavar="TOPIC,…", help="Topics --kafka expects."
    ),
    env_file: Path = ENV_FILE_OPTION,
) -> None:
    """Probe /healthz and /livez (and optionally a real subscribe, Kafka and the metrics).

    Prints one line per check and exits 0 only when every requested check
    passes, 1 otherwise: fit for cron, CI and Kubernetes exec probes.
    """
    if timeout <= 0:
        fail("--timeout must be more than 0", EXIT_USAGE)
    settings = settings_or_exit(
        {"WS_URL": url, "WS_TOKEN": token, "WS_AUTH_SECRET": read_secret(secret, secret_file),
         "WS_KAFKA_BROKERS": brokers, "WS_KAFKA_TOPICS": topics},
        env_file, require_secret=False, warn=False,
    )  # fmt: skip
    quiet_libraries()
    if wait:
        wait_healthy(settings.http_url, wait)
    results = [check_http(settings, "/healthz", timeout), check_http(settings, "/livez", timeout)]
    if subscribe:
        bearer = client_token(settings, subject)
        results.append(asyncio.run(check_subscribe(settings, subscribe, bearer, timeout)))
    if sse:
        channel = subscribe or settings.kafka_topics[0]
        bearer = client_token(settings, subject)
        results.append(
            asyncio.run(check_sse(settings, channel, bearer, timeout, message=bool(subscribe)))
        )
    if kafka:
        results.append(asyncio.run(check_kafka(settings, timeout)))
        if settings.schema_registry_url:
            results.append(check_registry(settings, timeout))
    if metrics:
        results += check_metrics(settings, interval, timeout)
    color = sys.stdout.isatty() and not tool_setting("NO_COLOR")
    for result in results:
        typer.echo(result.line(color))
    raise typer.Exit(0 if all(r.ok for r in results) else 1)
