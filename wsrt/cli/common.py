"""What every command shares: loading settings, and the one-line error exit."""

from __future__ import annotations

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


def settings_or_exit(
    flags: Mapping[str, object | None], env_file: Path | str | None, *, require_secret: bool
) -> Settings:
    """Build settings; on an invalid value print the one line and exit 2."""
    try:
        settings = load_settings(flags, env_file=env_file, require_secret=require_secret)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    for warning in settings.warnings:
        typer.echo(f"warning: {warning}", err=True)
    return settings
