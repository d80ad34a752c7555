"""``wsrt token``: mint an HS256 JWT for a client."""

from __future__ import annotations

import json

import typer

from wsrt.cli.common import EXIT_USAGE, fail
from wsrt.tokens import HMAC_ALGORITHMS, mint_token


def _claim(text: str) -> tuple[str, object]:
    name, sep, raw = text.partition("=")
    if not sep or not name:
        fail(f"--claim takes NAME=VALUE, got {text!r}", EXIT_USAGE)
    try:
        value: object = json.loads(raw)
    except ValueError:
        value = raw
    return name, value


def token(
    secret: str = typer.Argument(..., help="The HMAC secret (the server's WS_AUTH_SECRET)."),
    subject: str = typer.Argument(..., help="The sub claim: who the client is."),
    ttl: float = typer.Option(
        3600, "--ttl", help="Seconds until exp; 0 for a token that never expires."
    ),
    aud: str = typer.Option(
        None, "--aud", help="The aud claim (needed when the server sets WS_AUTH_AUDIENCE)."
    ),
    channels: str = typer.Option(
        None, "--channels", help="Comma-separated channel patterns the token grants (default: all)."
    ),
    claim: list[str] = typer.Option(
        [],
        "--claim",
        help="Extra claim NAME=VALUE (VALUE parsed as JSON when it is JSON); repeatable.",
    ),
    algorithm: str = typer.Option(
        HMAC_ALGORITHMS[0], "--algorithm", help=f"One of {', '.join(HMAC_ALGORITHMS)}."
    ),
) -> None:
    """Print a signed JWT, and nothing else, so that $(wsrt token …) works."""
    if ttl < 0:
        fail("--ttl must be 0 or more seconds", EXIT_USAGE)
    if algorithm.upper() not in HMAC_ALGORITHMS:
        fail(
            f"--algorithm must be one of {', '.join(HMAC_ALGORITHMS)}, got {algorithm!r}",
            EXIT_USAGE,
        )
    granted = None if channels is None else [c.strip() for c in channels.split(",") if c.strip()]
    typer.echo(
        mint_token(
            secret,
            subject,
            ttl=ttl or None,
            audience=aud,
            channels=granted,
            extra_claims=dict(_claim(c) for c in claim),
            algorithm=algorithm.upper(),
        )
    )
