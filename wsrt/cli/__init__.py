"""The ``wsrt`` command: one Typer app, one module per command."""

from __future__ import annotations

import typer

from wsrt.cli import serve, token, unbuilt

app = typer.Typer(
    name="wsrt",
    help="Kafka-to-WebSocket real-time bridge and its operator toolkit.",
    no_args_is_help=True,
    add_completion=False,
    # Locals in a traceback could hold the secret: never print them.
    pretty_exceptions_enable=False,
)
app.command("serve")(serve.serve)
app.command("token")(token.token)
for name, summary in unbuilt.COMMANDS.items():
    app.command(name, help=summary, context_settings=unbuilt.CONTEXT)(unbuilt.handler(name))


def main() -> None:
    app()
