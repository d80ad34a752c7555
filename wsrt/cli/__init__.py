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


def version_line() -> str:
    """``wsrt 0.1.0 (Python 3.11.2; websockets 17.4; aiokafka 0.14.0)``: what a bug report needs."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from wsrt import __version__

    def of(package: str) -> str:
        try:
            return f"{package} {version(package)}"
        except PackageNotFoundError:
            return f"{package} missing"

    parts = [f"Python {platform.python_version()}", of("websockets"), of("aiokafka")]
    return f"wsrt {__version__} ({'; '.join(parts)})"


def _version(value: bool) -> None:
    if value:
        typer.echo(version_line())
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False,
        "--version",
        "-V",
        callback=_version,
        is_eager=True,
        help="Print the versions of wsrt, Python, websockets and aiokafka, and exit.",
    ),
) -> None:
    pass


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
