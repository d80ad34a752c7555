"""Commands that are designed but not built yet: they say so and exit 1."""

from __future__ import annotations

from collections.abc import Callable

import typer

COMMANDS = {
    "tail": "Watch a channel as a client (not available yet).",
    "check": "Probe a deployment's health (not available yet).",
    "produce": "Publish sample or given JSON messages to a topic (not available yet).",
    "loadtest": "Run the bundled k6 script against a server (not available yet).",
    "dev": "Start broker, demo feed and server locally (not available yet).",
}
CONTEXT = {"ignore_unknown_options": True, "allow_extra_args": True}


def handler(name: str) -> Callable[[typer.Context], None]:
    def command(ctx: typer.Context) -> None:
        typer.echo(f"error: 'wsrt {name}' is not available in this version yet.", err=True)
        raise typer.Exit(1)

    command.__name__ = name
    return command
