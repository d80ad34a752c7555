"""``wsrt token``: mint an HS256 JWT for a client."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from wsrt.cli.common import (
    ENV_FILE_OPTION,
    EXIT_USAGE,
    SECRET_FILE_OPTION,
    fail,
    read_secret,
    settings_or_exit,
)
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


def _filters(given: list[str]) -> dict[str, object]:
    """``--filter TOPIC=FILTER`` options as the ``filters`` claim, each filter checked."""
    from wsrt.filters import FilterError, parse

    claimed: dict[str, object] = {}
    for text in given:
        topic, sep, raw = text.partition("=")
        if not sep or not topic:
            fail(f"--filter takes TOPIC=FILTER (a JSON filter), got {text[:80]!r}", EXIT_USAGE)
        try:
            expression = json.loads(raw)
            parse(expression, max_bytes=16384)
        except ValueError as exc:  # JSON errors and FilterError
            what = exc if isinstance(exc, FilterError) else "not JSON"
            fail(f"--filter {topic}: {what}", EXIT_USAGE)
        if topic in claimed:
            fail(f"--filter names {topic} twice", EXIT_USAGE)
        claimed[topic] = expression
    return claimed


def _signed(
    path: str,
    algorithm: str | None,
    kid: str | None,
    subject: str,
    ttl: float,
    audience: str | None,
    channels: list[str] | None,
    extra: dict[str, object],
) -> str:
    """A token signed with the private key in ``path`` (RS*, PS*, ES*, EdDSA)."""
    import time

    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from wsrt.jwks import ASYMMETRIC_ALGORITHMS, fits

    if ttl < 0:
        fail("--ttl must be 0 or more seconds", EXIT_USAGE)
    try:
        key = load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as exc:
        fail(f"--private-key: cannot read {path}: {exc.strerror}", EXIT_USAGE)
    except (ValueError, TypeError):
        fail(f"--private-key: {path} is not a PEM private key without a password", EXIT_USAGE)
    if algorithm is None:
        curves = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
        if isinstance(key, rsa.RSAPrivateKey):
            algorithm = "RS256"
        elif isinstance(key, ec.EllipticCurvePrivateKey):
            algorithm = curves.get(key.curve.name, "ES256")
        elif isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
            algorithm = "EdDSA"
        else:
            fail(f"--private-key: {type(key).__name__} keys are not for tokens", EXIT_USAGE)
    matched = {a.upper(): a for a in ASYMMETRIC_ALGORITHMS}.get(algorithm.upper())
    if matched is None or not fits(key.public_key(), matched):
        fail(f"--algorithm {algorithm} does not go with this key", EXIT_USAGE)
    issued = int(time.time())
    payload: dict[str, object] = {"sub": subject, "iat": issued, **extra}
    if ttl:
        payload["exp"] = issued + int(ttl)
    if audience is not None:
        payload["aud"] = audience
    if channels is not None:
        payload["channels"] = channels
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(payload, key, algorithm=matched, headers=headers)  # type: ignore[arg-type]


def token(
    # Explained in the docstring: a type column would only say "<str>".
    words: list[str] = typer.Argument(..., metavar="[SECRET] SUBJECT", hidden=True),
    secret_file: str = SECRET_FILE_OPTION,
    ttl: float = typer.Option(
        3600,
        "--ttl",
        metavar="SECONDS",
        help="Seconds until exp; 0 for a token that never expires.",
    ),
    aud: str = typer.Option(
        None,
        "--aud",
        metavar="AUDIENCE",
        help="The aud claim (needed when the server sets WS_AUTH_AUDIENCE).",
    ),
    channels: str = typer.Option(
        None,
        "--channels",
        metavar="PATTERN,…",
        help="Comma-separated channel patterns the token grants (default: all).",
    ),
    filters: list[str] = typer.Option(
        [],
        "--filter",
        metavar="TOPIC=FILTER",
        help="A filter the server ANDs with every subscription to TOPIC (a pattern), as "
        "JSON (docs/protocol.md, 'Filters'); repeatable. The filters claim.",
    ),
    claim: list[str] = typer.Option(
        [],
        "--claim",
        metavar="NAME=VALUE",
        help="Extra claim NAME=VALUE (VALUE parsed as JSON when it is JSON); repeatable.",
    ),
    algorithm: str = typer.Option(
        None,
        "--algorithm",
        metavar="ALG",
        help=f"One of {', '.join(HMAC_ALGORITHMS)} (default HS256); with --private-key one "
        "of RS256 … PS512, ES256/384/512, EdDSA (default RS256, ES256 or EdDSA by the key).",
    ),
    private_key: str = typer.Option(
        None,
        "--private-key",
        metavar="PATH",
        help="Sign as an identity provider would, with this PEM private key (tests, on-call); "
        "no HMAC secret is needed.",
    ),
    kid: str = typer.Option(None, "--kid", metavar="KID", help="The kid header (--private-key)."),
    issuer: str = typer.Option(
        None, "--issuer", metavar="ISS", help="The iss claim (what WS_AUTH_ISSUER checks)."
    ),
    env_file: Path = ENV_FILE_OPTION,
) -> None:
    """Print a signed JWT for SUBJECT (the sub claim) and nothing else: $(wsrt token …) works.

    The HMAC secret is the server's WS_AUTH_SECRET: read from the environment
    or .env, from --secret-file, or given before SUBJECT (the runbook's form).
    Prefer the first two: a secret on the command line stays in shell history
    and ps.
    """
    if len(words) > 2:
        fail("give [SECRET] SUBJECT: at most two arguments", EXIT_USAGE)
    *given, subject = words
    extra = dict(_claim(c) for c in claim)
    if filters:
        extra["filters"] = _filters(filters)
    if issuer is not None:
        extra["iss"] = issuer
    granted = None if channels is None else [c.strip() for c in channels.split(",") if c.strip()]
    if private_key is not None:
        if given or secret_file is not None:
            fail("--private-key signs without a secret: give one or the other", EXIT_USAGE)
        typer.echo(_signed(private_key, algorithm, kid, subject, ttl, aud, granted, extra))
        return
    if kid is not None:
        fail("--kid goes with --private-key", EXIT_USAGE)
    algorithm = algorithm or HMAC_ALGORITHMS[0]
    if given and secret_file is not None:
        fail("give the secret as an argument or --secret-file, not both", EXIT_USAGE)
    secret = given[0] if given else read_secret(None, secret_file)
    if secret is None:
        secret = settings_or_exit({}, env_file, require_secret=False, warn=False).auth_secret
    if not secret:
        fail(
            "no secret: set WS_AUTH_SECRET, pass --secret-file PATH (or - for stdin), "
            "or give it before the subject",
            EXIT_USAGE,
        )
    if ttl < 0:
        fail("--ttl must be 0 or more seconds", EXIT_USAGE)
    if algorithm.upper() not in HMAC_ALGORITHMS:
        fail(
            f"--algorithm must be one of {', '.join(HMAC_ALGORITHMS)}, got {algorithm!r}",
            EXIT_USAGE,
        )
    typer.echo(
        mint_token(
            secret,
            subject,
            ttl=ttl or None,
            audience=aud,
            channels=granted,
            extra_claims=extra,
            algorithm=algorithm.upper(),
        )
    )
