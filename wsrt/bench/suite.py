"""The scenarios of ``wsrt bench`` by name, and the run of a selection of them."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from wsrt.bench.run import Result, Scale
from wsrt.bench.transports import TransportBench
from wsrt.brokers import Broker

SCENARIOS = (
    "fanout", "baseline", "latency", "isolation", "connections", "handshakes", "replay",
    "policies", "hostile", "workers", "state", "formats", "filters", "sse",
)  # fmt: skip


def run(
    broker: Broker,
    scenarios: tuple[str, ...],
    quick: bool,
    profile: bool = False,
    starting: Callable[[int, str], None] | None = None,
) -> list[Result]:
    """Run ``scenarios`` in order; ``starting(i, name)`` before the i-th (from 1)."""
    scale = Scale.quick() if quick else Scale()
    with tempfile.TemporaryDirectory(prefix="wsrt-bench-") as tmp:
        bench = TransportBench(broker, scale, Path(tmp), profile)
        half = scale.latency_rate / 2
        # Each scenario by name: the results it adds, in order.
        table: dict[str, Callable[[], list[Result]]] = {
            "fanout": lambda: [bench.fanout(baseline=False)],
            "baseline": lambda: [bench.fanout(baseline=True)],
            "latency": lambda: [
                bench.latency(False, rate=half, name=f"latency, {half:g} msg/s"),
                bench.latency(stalled=False),
            ],
            "isolation": lambda: [bench.latency(stalled=True)],
            "connections": lambda: [bench.connections()],
            "handshakes": bench.handshakes,
            "replay": bench.replay,
            "policies": bench.policies,
            "hostile": lambda: [bench.hostile()],
            "workers": bench.workers,
            "state": bench.state,
            "formats": bench.formats,
            "filters": bench.filters,
            "sse": bench.sse,
        }
        results: list[Result] = []
        for number, name in enumerate(scenarios, 1):
            if starting is not None:
                starting(number, name)
            results.extend(table[name]())
    return results
