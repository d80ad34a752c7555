"""``wsrt serve``: run the bridge."""

from __future__ import annotations

from pathlib import Path

import typer

from wsrt.cli.common import ENV_FILE_OPTION, settings_or_exit


def serve(
    bind: str = typer.Option(
        None, "--bind", help="Listen address host:port or :port [WS_BIND_ADDRESS]."
    ),
    brokers: str = typer.Option(
        None, "--brokers", help="Kafka bootstrap servers [WS_KAFKA_BROKERS]."
    ),
    topics: str = typer.Option(
        None, "--topics", help="Topics to serve, comma-separated [WS_KAFKA_TOPICS]."
    ),
    group_id: str = typer.Option(None, "--group-id", help="Consumer group id [WS_KAFKA_GROUP_ID]."),
    mode: str = typer.Option(None, "--mode", help="broadcast or shared [WS_FANOUT_MODE]."),
    replica_id: str = typer.Option(None, "--replica-id", help="Replica identity [WS_REPLICA_ID]."),
    client_buffer: str = typer.Option(
        None, "--client-buffer", help="Per-client queue in messages [WS_CLIENT_BUFFER]."
    ),
    topic_policies: str = typer.Option(
        None,
        "--topic-policies",
        help="Slow-consumer policy per topic, e.g. order_book=conflate,lines=drop "
        "[WS_TOPIC_POLICIES].",
    ),
    log_format: str = typer.Option(None, "--log-format", help="text or json [WS_LOG_FORMAT]."),
    log_level: str = typer.Option(
        None, "--log-level", help="DEBUG, INFO, WARNING, ERROR [WS_LOG_LEVEL]."
    ),
    env_file: Path = ENV_FILE_OPTION,
) -> None:
    """Run the bridge: consume the Kafka topics and serve them to WebSocket clients on /ws.

    Every setting comes from WS_* environment variables (or a .env file); the
    flags override them. WS_AUTH_SECRET is required. /healthz answers 200 once
    the consumer is positioned; SIGTERM drains within WS_SHUTDOWN_TIMEOUT_SECONDS.
    """
    flags = {
        "WS_BIND_ADDRESS": bind,
        "WS_KAFKA_BROKERS": brokers,
        "WS_KAFKA_TOPICS": topics,
        "WS_KAFKA_GROUP_ID": group_id,
        "WS_FANOUT_MODE": mode,
        "WS_REPLICA_ID": replica_id,
        "WS_CLIENT_BUFFER": client_buffer,
        "WS_TOPIC_POLICIES": topic_policies,
        "WS_LOG_FORMAT": log_format,
        "WS_LOG_LEVEL": log_level,
    }
    settings = settings_or_exit(flags, env_file, require_secret=True)

    from wsrt import app  # imported late: the other commands start faster without it
    from wsrt.logs import setup_logging

    setup_logging(settings.log_format, settings.log_level)
    raise typer.Exit(app.run(settings))
