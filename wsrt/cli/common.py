"""What every command shares: options bound to settings, loading them, the one-line error exit.

An option that sets a ``WS_*`` variable is declared with :func:`setting`: Typer
reads the variable from the environment and shows it in ``--help``, and the
help text is the variable's own (:data:`wsrt.config.VARIABLES`) unless the
command says more. Secrets have three quiet sources and one loud one
(:func:`secret_options`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import typer

from wsrt.config import VARIABLES, Settings, load_settings
from wsrt.errors import ConfigError

#: Exit status for invalid configuration or usage.
EXIT_USAGE = 2

ENV_FILE_OPTION = typer.Option(
    ".env",
    "--env-file",
    metavar="PATH",
    help="Read settings from this file (flags and environment win).",
)

_HELP = {v.name: v.help for v in VARIABLES}


def setting(name: str, *flags: str, help: str | None = None, **options: Any) -> Any:
    """A flag for the setting ``name``, which Typer also reads from the environment variable."""
    return typer.Option(None, *flags, envvar=name, help=help or _HELP[name], **options)


SECRET_HELP = (
    "HMAC secret to mint the token with. Prefer WS_AUTH_SECRET in the environment or "
    "--secret-file: a secret on the command line stays in shell history and ps."
)
SECRET_FILE_HELP = "Read the HMAC secret from this file ('-': standard input)."


#: ``--url`` and ``--token`` of the client commands that connect as a client (tail, loadtest).
URL_OPTION = setting("WS_URL", "--url", metavar="URL", help="Server WebSocket URL.")
TOKEN_OPTION = setting("WS_TOKEN", "--token", metavar="JWT", help="JWT to present.")
#: ``--secret`` (bound to WS_AUTH_SECRET) and ``--secret-file``, for the client commands.
SECRET_OPTION = setting("WS_AUTH_SECRET", "--secret", metavar="SECRET", help=SECRET_HELP)
SECRET_FILE_OPTION = typer.Option(None, "--secret-file", metavar="PATH", help=SECRET_FILE_HELP)


def read_secret(secret: str | None, secret_file: str | None) -> str | None:
    """The secret from ``--secret-file`` (a path or ``-``), else ``secret``; exit 2 if unread."""
    if secret_file is None:
        return secret
    try:
        text = sys.stdin.read() if secret_file == "-" else Path(secret_file).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"--secret-file: cannot read {secret_file}: {getattr(exc, 'strerror', exc)}",
             EXIT_USAGE)  # fmt: skip
    # A file written by echo or an editor ends with a newline that is not part of the secret.
    value = text.rstrip("\r\n")
    if not value:
        fail(f"--secret-file: {secret_file} is empty", EXIT_USAGE)
    return value


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
        "no token: pass --token or --secret-file, or set WS_TOKEN or WS_AUTH_SECRET "
        "(wsrt dev leaves them in .env)",
        EXIT_USAGE,
    )
