"""The parts of WS_WORKERS that need no processes: the spec and the merged metrics."""

from __future__ import annotations

from pathlib import Path

from wsrt.config import load_settings
from wsrt.metrics import parse
from wsrt.workers import MAX_QUICK_EXITS, STABLE_SECONDS, Restarts, WorkerSpec, merge_metrics

ONE = b"""# HELP wsrt_connections Open connections.
# TYPE wsrt_connections gauge
wsrt_connections 3.0
# HELP wsrt_frames_delivered_total Frames written.
# TYPE wsrt_frames_delivered_total counter
wsrt_frames_delivered_total 120.0
# HELP wsrt_delivery_delay_seconds Delay.
# TYPE wsrt_delivery_delay_seconds histogram
wsrt_delivery_delay_seconds_bucket{le="0.01"} 2.0
wsrt_delivery_delay_seconds_bucket{le="+Inf"} 4.0
wsrt_delivery_delay_seconds_count 4.0
wsrt_delivery_delay_seconds_sum 0.1
"""


def test_every_workers_samples_come_out_with_its_label() -> None:
    two = ONE.replace(b"connections 3.0", b"connections 5.0").replace(b"120.0", b"80.0")
    merged = parse(merge_metrics({0: ONE, 1: two}).decode())
    assert merged[("wsrt_connections", (("worker", "0"),))] == 3
    assert merged[("wsrt_connections", (("worker", "1"),))] == 5
    assert merged[("wsrt_frames_delivered_total", (("worker", "1"),))] == 80
    assert merged[("wsrt_delivery_delay_seconds_bucket", (("le", "0.01"), ("worker", "0")))] == 2
    assert len(merged) == 2 * 6  # nothing lost, nothing summed away


def test_a_worker_rejoins_its_own_commit_group(tmp_path: Path) -> None:
    spec = WorkerSpec.parse(f"1:4:{tmp_path}")
    assert (spec.index, spec.count, spec.rundir) == (1, 4, tmp_path)
    assert str(spec) == f"1:4:{tmp_path}"
    assert spec.socket_of(3) == tmp_path / "worker-3.sock"
    settings = load_settings(
        {"WS_REPLICA_ID": "node-a", "WS_WORKERS": "4"}, environ={}, env_file=None
    )
    mine = spec.settings(settings)
    assert mine.workers == 1 and mine.group_id == "ws-realtime-node-a-w1"


def test_a_worker_that_dies_soon_after_each_start_is_given_up_on() -> None:
    restarts = Restarts(initial=1.0, most=8.0)
    delays = []
    now = 0.0
    for _ in range(MAX_QUICK_EXITS - 1):
        restarts.started(now)
        now += 2.0
        delay = restarts.exited(now)
        assert delay is not None
        delays.append(delay)
        now += delay
    assert delays == sorted(delays) and delays[-1] > delays[0]  # backing off
    restarts.started(now)
    assert restarts.exited(now + 1.0) is None


def test_a_worker_that_ran_long_enough_starts_the_count_and_backoff_again() -> None:
    restarts = Restarts(initial=1.0, most=8.0)
    for _ in range(MAX_QUICK_EXITS - 1):
        restarts.started(0.0)
        assert restarts.exited(1.0) is not None
    restarts.started(10.0)
    first = restarts.exited(10.0 + STABLE_SECONDS)  # it had been healthy
    assert first is not None and first <= 1.0
    assert restarts.quick_exits == 1
