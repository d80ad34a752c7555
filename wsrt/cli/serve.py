"""``wsrt serve``: run the bridge."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from wsrt.cli.common import ENV_FILE_OPTION, setting, settings_or_exit


def serve(
    bind: str = setting("WS_BIND_ADDRESS", "--bind", metavar="HOST:PORT"),
    brokers: str = setting("WS_KAFKA_BROKERS", "--brokers", metavar="HOST:PORT,…"),
    topics: str = setting("WS_KAFKA_TOPICS", "--topics", metavar="TOPIC,…"),
    group_id: str = setting("WS_KAFKA_GROUP_ID", "--group-id", metavar="GROUP"),
    mode: str = setting("WS_FANOUT_MODE", "--mode", metavar="MODE"),
    replica_id: str = setting("WS_REPLICA_ID", "--replica-id", metavar="ID"),
    client_buffer: str = setting("WS_CLIENT_BUFFER", "--client-buffer", metavar="MESSAGES"),
    topic_policies: str = setting(
        "WS_TOPIC_POLICIES", "--topic-policies", metavar="TOPIC=POLICY,…"
    ),
    log_format: str = setting("WS_LOG_FORMAT", "--log-format", metavar="FORMAT"),
    log_level: str = setting("WS_LOG_LEVEL", "--log-level", metavar="LEVEL"),
    workers: str = setting("WS_WORKERS", "--workers", metavar="N|auto"),
    # Set by the parent of WS_WORKERS > 1 on each worker it starts.
    worker: str = typer.Option(None, "--worker", hidden=True),
    env_file: Path = ENV_FILE_OPTION,
) -> None:
    """Run the bridge: consume the Kafka topics and serve them to WebSocket clients on /ws.

    Every setting comes from WS_* environment variables (or a .env file); the
    flags override them. WS_AUTH_SECRET is required: set it in the environment
    (or .env, or a Kubernetes Secret), never on a command line. /healthz
    answers 200 once the consumer is positioned; SIGTERM drains within
    WS_SHUTDOWN_TIMEOUT_SECONDS. With --workers N, N processes share the port,
    each a full consumer, under this one.
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
        "WS_WORKERS": workers,
    }
    settings = settings_or_exit(flags, env_file, require_secret=True, warn=worker is None)

    from wsrt import app  # imported late: the other commands start faster without it
    from wsrt.logs import setup_logging
    from wsrt.workers import WorkerSpec, supervise

    spec = WorkerSpec.parse(worker) if worker is not None else None
    setup_logging(settings.log_format, settings.log_level, None if spec is None else spec.index)
    if spec is not None:
        raise typer.Exit(app.run(spec.settings(settings), worker=spec))
    if settings.workers > 1:
        # The workers run this same command line, each with its --worker spec.
        raise typer.Exit(supervise(settings, [sys.executable, "-m", "wsrt", *sys.argv[1:]]))
    raise typer.Exit(app.run(settings))
