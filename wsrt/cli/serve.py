"""``wsrt serve``: run the bridge."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from wsrt.cli.common import ENV_FILE_OPTION, setting, settings_or_exit

#: serve's flags: parameter → (the setting it sets, the flag, its metavar), each named once.
_FLAGS = {
    "bind": ("WS_BIND_ADDRESS", "--bind", "HOST:PORT"),
    "brokers": ("WS_KAFKA_BROKERS", "--brokers", "HOST:PORT,…"),
    "topics": ("WS_KAFKA_TOPICS", "--topics", "TOPIC,…"),
    "group_id": ("WS_KAFKA_GROUP_ID", "--group-id", "GROUP"),
    "mode": ("WS_FANOUT_MODE", "--mode", "MODE"),
    "replica_id": ("WS_REPLICA_ID", "--replica-id", "ID"),
    "client_buffer": ("WS_CLIENT_BUFFER", "--client-buffer", "MESSAGES"),
    "topic_policies": ("WS_TOPIC_POLICIES", "--topic-policies", "TOPIC=POLICY,…"),
    "log_format": ("WS_LOG_FORMAT", "--log-format", "FORMAT"),
    "log_level": ("WS_LOG_LEVEL", "--log-level", "LEVEL"),
    "workers": ("WS_WORKERS", "--workers", "N|auto"),
}
_OPTION = {param: setting(name, flag, metavar=mv) for param, (name, flag, mv) in _FLAGS.items()}


def serve(
    bind: str = _OPTION["bind"],
    brokers: str = _OPTION["brokers"],
    topics: str = _OPTION["topics"],
    group_id: str = _OPTION["group_id"],
    mode: str = _OPTION["mode"],
    replica_id: str = _OPTION["replica_id"],
    client_buffer: str = _OPTION["client_buffer"],
    topic_policies: str = _OPTION["topic_policies"],
    log_format: str = _OPTION["log_format"],
    log_level: str = _OPTION["log_level"],
    workers: str = _OPTION["workers"],
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
    given = locals()
    flags = {name: given[param] for param, (name, _, _) in _FLAGS.items()}
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
