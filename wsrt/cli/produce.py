"""``wsrt produce``: publish sample or given JSON messages to a topic."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import orjson
import typer
from aiokafka.errors import KafkaError

from wsrt.cli.common import (
    ENV_FILE_OPTION,
    EXIT_USAGE,
    fail,
    quiet_libraries,
    setting,
    settings_or_exit,
)
from wsrt.config import Settings
from wsrt.kafka.options import denied_words, discover
from wsrt.protocol import channel_list
from wsrt.tools.feed import producer, publish, samples
from wsrt.wire import is_json


def _read_lines(source: str) -> list[bytes]:
    try:
        data = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except OSError as exc:
        fail(f"--file: cannot read {source}: {exc.strerror}", EXIT_USAGE)
    lines = [line.strip() for line in data.splitlines()]
    messages = [line for line in lines if line]
    for number, line in enumerate(lines, 1):
        if line and not is_json(line):
            fail(
                f"--file: line {number} is not JSON: {line[:80].decode(errors='replace')}",
                EXIT_USAGE,
            )
    return messages


def _framed(
    form: str,
    schema: str | None,
    message: str | None,
    lines: list[bytes] | None,
    topic: str,
    settings: Settings,
) -> list[bytes]:
    """Each line encoded with ``schema`` in Confluent framing, the schema registered first."""
    from wsrt.kafka.registry import RegistryUnavailable, client
    from wsrt.schemas import framed

    kinds = {"avro": "AVRO", "protobuf": "PROTOBUF", "json-schema": "JSON"}
    if form not in kinds:
        fail(f"--format: {form} is not one of json, {', '.join(kinds)}", EXIT_USAGE)
    if lines is None or schema is None:
        fail(f"--format {form} needs --file and --schema", EXIT_USAGE)
    if message is not None and form != "protobuf":
        fail("--message names a message of a --format protobuf schema", EXIT_USAGE)
    if not settings.schema_registry_url:
        fail(f"--format {form} needs --registry (or WS_SCHEMA_REGISTRY_URL)", EXIT_USAGE)
    text, encode = _encoder(form, schema, message)
    payloads = []
    for number, line in enumerate(lines, 1):
        try:
            payloads.append(encode(orjson.loads(line)) if encode else line)
        except ValueError as exc:
            fail(f"--file: line {number} {exc}", EXIT_USAGE)
    try:
        ident = client(settings, settings.kafka_request_timeout).register(
            f"{topic}-value", text, kinds[form]
        )
    except RegistryUnavailable as exc:
        fail(str(exc))
    return [framed(ident, payload) for payload in payloads]


def _encoder(
    form: str, schema: str, message: str | None
) -> tuple[str, Callable[[object], bytes] | None]:
    """The text of ``schema`` and what encodes a line with it (JSON Schema: as given)."""
    from wsrt import protobuf
    from wsrt.schemas import avro_encoder

    kind = {"avro": "an Avro schema", "protobuf": "a Protobuf schema"}.get(form)
    try:
        text = Path(schema).read_text()
        if form == "avro":
            return text, avro_encoder(text)
        if form == "protobuf":
            return text, protobuf.encoder(text, message)[0]
    except OSError as exc:
        fail(f"--schema: cannot read {schema}: {exc.strerror}", EXIT_USAGE)
    except ValueError as exc:  # fastavro's and protoc's schema errors are ValueErrors
        if message is not None and str(exc).startswith(f"no message {message}"):
            fail(f"--message: {exc}", EXIT_USAGE)
        fail(f"--schema: {schema} is not {kind}: {exc}", EXIT_USAGE)
    return text, None


async def _given(
    topic: str, values: list[bytes], key: bytes | None
) -> AsyncIterator[tuple[str, bytes | None, bytes]]:
    for value in values:
        yield topic, key, value


async def _keyed(
    messages: AsyncIterator[tuple[str, bytes | None, bytes]], key: bytes | None
) -> AsyncIterator[tuple[str, bytes | None, bytes]]:
    async for topic, sample_key, value in messages:
        yield topic, key if key is not None else sample_key, value


def produce(
    topic: list[str] = typer.Option(
        ...,
        "--topic",
        "-t",
        metavar="TOPIC",
        help="Topic to publish to; repeatable for samples (round-robin).",
    ),
    file: str = typer.Option(
        None,
        "--file",
        "-f",
        metavar="PATH",
        help="JSON messages, one per line ('-' for stdin). Default: samples.",
    ),
    count: int = typer.Option(
        10, "--count", "-n", metavar="N", help="Sample messages to send; 0 = until Ctrl-C."
    ),
    rate: float = typer.Option(
        10.0,
        "--rate",
        "-r",
        metavar="PER_SECOND",
        help="Messages per second; 0 = as fast as possible.",
    ),
    form: str = typer.Option(
        "json",
        "--format",
        metavar="FORMAT",
        help="json (as given), avro, protobuf or json-schema: each --file line framed for "
        "a Schema Registry, the --schema registered under TOPIC-value first.",
    ),
    schema: str = typer.Option(
        None,
        "--schema",
        metavar="PATH",
        help="The Avro (.avsc), Protobuf (.proto) or JSON Schema of --format.",
    ),
    message: str = typer.Option(
        None,
        "--message",
        metavar="NAME",
        help="The Protobuf message each line is (Outer.Inner for a nested one; default: "
        "the first the .proto declares).",
    ),
    registry: str = setting("WS_SCHEMA_REGISTRY_URL", "--registry", metavar="URL"),
    key: str = typer.Option(
        None,
        "--key",
        "-k",
        metavar="KEY",
        help="Kafka key for every message (default: per sample).",
    ),
    brokers: str = setting("WS_KAFKA_BROKERS", "--brokers", metavar="HOST:PORT,…"),
    env_file: Path = ENV_FILE_OPTION,
) -> None:
    """Publish JSON messages to a topic, to prove the path Kafka → client end to end.

    Without --file it sends realistic samples for lines, order_book and
    analytics (keyed by event, symbol and metric). With --file every line must
    be JSON; the whole input is checked before anything is sent. With
    --format avro, protobuf or json-schema and --schema, each line is encoded
    with that schema (Protobuf: the canonical JSON of --message), registered
    in the Schema Registry under TOPIC-value, and sent in Confluent framing.
    """
    if count < 0 or rate < 0:
        fail("--count and --rate must be 0 or more", EXIT_USAGE)
    topics = channel_list(topic, unique=True)
    if file is not None and len(topics) != 1:
        fail("--file sends to exactly one --topic", EXIT_USAGE)
    settings = settings_or_exit(
        {"WS_KAFKA_BROKERS": brokers, "WS_SCHEMA_REGISTRY_URL": registry},
        env_file, require_secret=False, warn=False,
    )  # fmt: skip
    quiet_libraries()
    key_bytes = key.encode() if key is not None else None
    given = _read_lines(file) if file is not None else None
    if form != "json":
        given = _framed(form, schema, message, given, topics[0], settings)

    async def run() -> int:
        kafka = producer(settings)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
        where = ",".join(settings.kafka_brokers)
        try:
            await kafka.start()
        except KafkaError as exc:
            await kafka.stop()
            fail(f"cannot reach Kafka at {where}: {exc}")
        try:
            _, missing, denied, _ = await discover(kafka.client, tuple(topics))
            if denied:
                fail(denied_words(denied, settings))
            if missing:
                fail(f"topic {missing[0]!r} does not exist on {where}")
            messages = (
                _given(topics[0], given, key_bytes)
                if given is not None
                else _keyed(samples(topics, count), key_bytes)
            )
            return await publish(kafka, messages, rate, stop)
        except KafkaError as exc:
            fail(f"publishing to {', '.join(topics)} failed: {exc}")
        finally:
            await kafka.stop()

    sent = asyncio.run(run())
    typer.echo(f"sent {sent} message{'s' * (sent != 1)} to {', '.join(topics)}")
