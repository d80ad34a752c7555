"""The benchmark's quick mode, so it cannot rot: correctness only, never timing."""

from __future__ import annotations

import shutil

import pytest

from wsrt.bench.suite import SCENARIOS, run
from wsrt.brokers import Broker


@pytest.mark.timeout(420)
def test_quick_benchmark_delivers_everything_in_order(broker: Broker) -> None:
    started: list[tuple[int, str]] = []
    # The formats scenario runs Apicurio Registry, with Java and Maven.
    registry = bool(shutil.which("java") and shutil.which("mvn"))
    scenarios = SCENARIOS if registry else tuple(s for s in SCENARIOS if s != "formats")
    results = run(broker, scenarios, quick=True, starting=lambda *step: started.append(step))
    # wsrt bench says which scenario runs, before it runs.
    assert started == list(enumerate(scenarios, 1))
    assert [r.scenario for r in results] == [
        "fan-out, wsrt hub",
        "fan-out, websockets.broadcast() per message",
        "latency, 25 msg/s",
        "latency",
        "isolation: 1 stalled client",
        "idle connections",
        "handshakes by algorithm",
        "live, no replays",
        "live beside 3 replays",
        "one replay alone",
        "replay to a client that stops reading",
        "policies: fan-out, every client keeps up, disconnect topic",
        "policies: fan-out, every client keeps up, conflate topic",
        "policies: fan-out, every client keeps up, drop topic",
        "policies: the others alone, first",
        "policies: disconnect, 4 slow clients",
        "policies: conflate, 4 slow clients",
        "policies: drop, 4 slow clients",
        "policies: conflate, 4 slow clients, WS_SEND_BUFFER_BYTES=16384",
        "policies: drop, 4 slow clients, WS_SEND_BUFFER_BYTES=16384",
        "policies: the others alone, last",
        "hostile: connections at every limit",
        "workers: 1 at saturation",
        "workers: 2 at saturation",
        "state on subscribe",
        "live, no snapshots",
        "live beside 20 snapshots of 500 keys",
    ] + (["formats: json", "formats: avro (same data)"] if registry else []) + [
        "filters: none", "filters: 100 distinct", "deflate: once per frame", "deflate: per client",
        "transports: WebSocket", "transports: SSE", "transports: SSE against WebSocket",
    ]  # fmt: skip
    for result in results:
        assert result.checks, result.scenario
        failed = [name for name, ok in result.checks.items() if not ok]
        assert not failed, f"{result.scenario}: {failed} {result.figures}"
    fanout = results[0]
    assert "every frame delivered" in fanout.checks  # the quick run is never cut by its window
