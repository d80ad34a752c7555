"""The ``wsrt`` command: one Typer app, one module per command."""

from __future__ import annotations

import typer

from wsrt.cli import bench, check, dev, loadtest, produce, serve, tail, token

app = typer.Typer(
    name="wsrt",
    help="Kafka-to-WebSocket real-time bridge and its operator toolkit.",
    no_args_is_help=True,
    add_completion=False,
    # Locals in a traceback could hold the secret: never print them.
    pretty_exceptions_enable=False,
)
app.command("serve")(serve.serve)
app.command("dev")(dev.dev)
app.command("token")(token.token)
app.command("tail")(tail.tail)
app.command("check")(check.check)
app.command("produce")(produce.produce)
app.command("loadtest")(loadtest.loadtest)
app.command("bench")(bench.bench)


def main() -> None:
    app()
