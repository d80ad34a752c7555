"""``wsrt bench``: the benchmark suite on a real broker (docs/performance.md).

The benchmarks are the package's :mod:`wsrt.bench`: scenarios, load client and
baseline server ship with wsrt, so an installed wsrt measures itself.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from wsrt.cli.common import EXIT_USAGE, fail, quiet_libraries
from wsrt.tools.progress import Progress


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if value < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "-" if value is None else str(value)


def bench(
    scenario: list[str] = typer.Option(
        [],
        "--scenario",
        "-s",
        metavar="NAME",
        help="fanout, baseline, latency, isolation, connections, handshakes, replay, policies, "
        "hostile, workers, state, formats, filters, sse (repeatable; default all).",
    ),
    quick: bool = typer.Option(False, "--quick", help="Small counts, a few seconds per scenario."),
    broker: str = typer.Option(
        None,
        "--broker",
        metavar="KIND",
        help="apache or embedded (default: WSRT_TEST_BROKER, else by Java).",
    ),
    profile: bool = typer.Option(
        False, "--profile", help="Profile the server with py-spy during the fan-out scenarios."
    ),
) -> None:
    """Measure fan-out, latency, isolation, connections, replays and policies on a real broker.

    Fan-out throughput (against a broadcast() baseline), latency,
    slow-consumer isolation, idle connections, live latency beside replays and
    the slow-consumer policies, printed as tables with the machine, versions
    and parameters.

    Exit 1 when a correctness check fails (a frame missing or out of order, a
    client not dropped or dropped wrongly); timings are reported, never judged.
    """
    from wsrt.bench.run import Scale, machine
    from wsrt.bench.suite import SCENARIOS, run
    from wsrt.brokers import default_kind, make_broker

    chosen = tuple(scenario) or SCENARIOS
    unknown = set(chosen) - set(SCENARIOS)
    if unknown or (broker and broker not in ("apache", "embedded")):
        fail(f"scenarios are {', '.join(SCENARIOS)}; --broker is apache or embedded", EXIT_USAGE)
    if profile:
        import shutil

        beside = Path(sys.executable).parent / "py-spy"
        if not (shutil.which("py-spy") or beside.exists()):
            fail("--profile needs py-spy: pip install py-spy", EXIT_USAGE)
    quiet_libraries()
    console = Console()
    kind = broker or default_kind()
    scale = Scale.quick() if quick else Scale()
    progress = Progress("wsrt bench")
    started = time.monotonic()

    def starting(number: int, name: str) -> None:
        progress.start(
            f"scenario {number}/{len(chosen)}: {name} ({time.monotonic() - started:.0f}s so far)"
        )

    with make_broker(kind) as kafka:
        info = {**machine(), "broker": kafka.describe()}
        console.print("  ".join(f"[bold]{k}[/] {v}" for k, v in info.items()))
        console.print(f"[bold]parameters[/] {'quick' if quick else 'full'}: {scale}")
        results = run(kafka, chosen, quick, profile, starting)
    progress.finish(f"{len(chosen)} scenarios in {time.monotonic() - started:.0f}s")
    failed = _print(console, results)
    if failed:
        fail("correctness checks failed: " + "; ".join(failed))


def _print(console: Console, results: list[Any]) -> list[str]:
    """One table per scenario and the fan-out ratio; the failed checks."""
    failed = []
    for result in results:
        table = Table(title=result.scenario, show_header=False, title_justify="left")
        for key, value in result.figures.items():
            table.add_row(key, _fmt(value))
        for check, ok in result.checks.items():
            table.add_row(check, "[green]ok[/]" if ok else "[red]FAILED[/]")
            if not ok:
                failed.append(f"{result.scenario}: {check}")
        console.print(table)
        if result.profile:
            console.print(
                f"[bold]hottest functions of the server (self time), {result.scenario}[/]"
            )
            for share, function in result.profile:
                console.print(f"  {share:6.1%}  {function}")
    by_name = {r.scenario: r.figures for r in results}
    ours = by_name.get("fan-out, wsrt hub", {}).get("frames/s")
    base = by_name.get("fan-out, websockets.broadcast() per message", {}).get("frames/s")
    if ours and base:
        console.print(
            f"[bold]fan-out ratio[/] wsrt hub / broadcast() baseline = {ours / base:.1f}x"
        )
    keeps_up = "policies: fan-out, every client keeps up, {} topic"
    plain = by_name.get(keeps_up.format("disconnect"), {}).get("frames/s")
    for policy in ("conflate", "drop"):
        other = by_name.get(keeps_up.format(policy), {}).get("frames/s")
        if plain and other:
            console.print(
                f"[bold]policy cost[/] fan-out frames/s, {policy} topic / disconnect topic = "
                f"{other / plain:.2f}x (every client keeps up)"
            )
    one, two = (by_name.get(f"workers: {n} at saturation", {}) for n in (1, 2))
    if one.get("frames/s") and two.get("frames/s"):
        ratio = two["frames/s"] / one["frames/s"]
        p99 = f", p99 {two['p99 ms'] / one['p99 ms']:.2f}x" if one.get("p99 ms") else ""
        console.print(f"[bold]workers[/] 2 / 1 at saturation: frames/s {ratio:.2f}x{p99}")
    alone = by_name.get("live, no replays", {})
    beside: dict[str, Any] = next(
        (f for name, f in by_name.items() if name.startswith("live beside")), {}
    )
    key = "live p99 ms in the replays' seconds"
    if alone.get(key) and beside.get(key):
        console.print(
            f"[bold]replay isolation[/] live p99 beside replays / without = "
            f"{beside[key] / alone[key]:.2f}x (same seconds of each run)"
        )
    return failed
