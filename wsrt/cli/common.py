"""What every command shares: loading settings, and the one-line error exit."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import NoReturn

import typer

from wsrt.config import Settings, load_settings
from wsrt.errors import ConfigError

#: Exit status for invalid configuration or usage.
EXIT_USAGE = 2

ENV_FILE_OPTION = typer.Option(
    ".env", "--env-file", help="Read settings from this file (flags and environment win)."
)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one line on stderr and exit with ``code``."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def quiet_libraries() -> None:
    """Client commands report failures in their own one line: silence library loggers."""
    for name in ("aiokafka", "kafka", "websockets"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def settings_or_exit(
    flags: Mapping[str, object | None],
    env_file: Path | str | None,
    *,
    require_secret: bool,
    warn: bool = True,
) -> Settings:
    """Build settings; on an invalid value print the one line and exit 2.

    ``warn`` prints the settings' warnings (the server's concern, not a client's).
    """
    try:
        settings = load_settings(flags, env_file=env_file, require_secret=require_secret)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    for warning in settings.warnings if warn else ():
        typer.echo(f"warning: {warning}", err=True)
    return settings


def client_token(settings: Settings, subject: str) -> str:
    """The token a client command presents: WS_TOKEN / --token, else one minted from the secret."""
    if settings.token:
        return settings.token
    if settings.auth_secret:
        from wsrt.tokens import mint_token

        return mint_token(settings.auth_secret, subject, algorithm=settings.auth_algorithms[0])
    fail(
        "no token: pass --token or --secret (or set WS_TOKEN or WS_AUTH_SECRET)",
        EXIT_USAGE,
    )
