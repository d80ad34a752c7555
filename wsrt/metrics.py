"""Prometheus metrics, cheap enough to leave on.

The hot path only bumps plain integers on :class:`Stats` (and on the hub's
:class:`~wsrt.outlet.DeliveryStats`); nothing is labelled per message or per
client. At scrape time :class:`Collector` turns those numbers, the hub's
subscription index and the readiness state into metric families.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from wsrt import __version__, protocol
from wsrt.health import Readiness
from wsrt.hub import Hub
from wsrt.outlet import DeliveryStats
from wsrt.state import State
from wsrt.wire import SKIP_REASONS

#: Upper bounds (seconds) of the delivery-delay histogram buckets.
DELAY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Window of the "recent slow consumers" gauge, for on-call at a glance.
RECENT_WINDOW_SECONDS = 300.0

#: Why a Kafka consumer was replaced (the ``reason`` label of the restart counter).
RESTART_REASONS = ("stalled", "loop_stalled", "error")

CLOSE_REASONS = (
    "normal", "client_going_away", "slow_consumer", "token_expired", "token_revoked", "shutdown",
    "policy", "error",
)  # fmt: skip


def close_reason(code: int | None, reason: str | None, by_server: bool = True) -> str:
    """The ``reason`` label of a closed connection (``by_server``: the server closed first).

    1001 from the server is its shutdown; from a client it is a tab closing or
    a load test ending (``client_going_away``), which says nothing about the server.
    """
    if reason == protocol.REASON_SLOW_CONSUMER:
        return "slow_consumer"
    if reason == protocol.REASON_TOKEN_EXPIRED:
        return "token_expired"
    if reason == protocol.REASON_TOKEN_REVOKED:
        return "token_revoked"
    if code == protocol.CLOSE_GOING_AWAY:
        return "shutdown" if by_server else "client_going_away"
    if code in (protocol.CLOSE_NORMAL, protocol.CLOSE_NO_STATUS):
        return "normal"
    if code in (
        protocol.CLOSE_UNSUPPORTED_DATA,
        protocol.CLOSE_POLICY_VIOLATION,
        protocol.CLOSE_TOO_BIG,
    ):
        return "policy"
    return "error"


class DelayHistogram:
    """Histogram of delays in seconds, observed in whole batches."""

    def __init__(self, buckets: tuple[float, ...] = DELAY_BUCKETS) -> None:
        self.bounds_ms = [b * 1000 for b in buckets]
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum_ms = 0.0

    def observe_ms(self, now_ms: float, timestamps: Iterable[int]) -> None:
        bounds, counts = self.bounds_ms, self.counts
        total = 0.0
        for ts in timestamps:
            delay = now_ms - ts
            if delay < 0:
                delay = 0.0  # producer clock ahead of ours
            counts[bisect_left(bounds, delay)] += 1
            total += delay
        self.sum_ms += total

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        cumulative, running = [], 0
        for bound, count in zip(self.buckets, self.counts, strict=False):
            running += count
            cumulative.append((repr(bound), running))
        running += self.counts[-1]
        cumulative.append(("+Inf", running))
        return HistogramMetricFamily(
            name, documentation, buckets=cumulative, sum_value=self.sum_ms / 1000
        )


@dataclass
class Stats:
    """Counters the gateway and the Kafka source update; read at scrape time."""

    connections_opened: int = 0
    #: Of those, event streams (/sse), and how many of them ended.
    sse_opened: int = 0
    sse_closed: int = 0
    connections_closed: Counter[str] = field(default_factory=Counter)
    handshakes_rejected: Counter[str] = field(default_factory=Counter)
    kafka_messages: Counter[str] = field(default_factory=Counter)
    #: Records not delivered, by (topic, reason) (docs/design.md, "Never silent").
    kafka_skipped: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: Consumers replaced by the watchdog or the supervisor, by reason.
    kafka_restarts: Counter[str] = field(default_factory=Counter)
    kafka_lag: dict[tuple[str, int], int] = field(default_factory=dict)
    kafka_last_commit: float = 0.0
    kafka_rebalances: int = 0
    delay: DelayHistogram = field(default_factory=DelayHistogram)
    slow_consumers: int = 0
    slow_recent: deque[float] = field(default_factory=deque)
    delivery: DeliveryStats = field(default_factory=DeliveryStats)
    #: Replays (docs/design.md, "Resume and replay"): reading, waiting for a slot, how they ended.
    #: Snapshots of state topics given, and the keys they held, by topic.
    snapshots: Counter[str] = field(default_factory=Counter)
    snapshot_keys: Counter[str] = field(default_factory=Counter)
    #: Seconds from a snapshot's subscribe to its snapshot_end, summed by topic.
    snapshot_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    replays_running: int = 0
    replays_waiting: int = 0
    replays_completed: int = 0
    replays_cancelled: int = 0
    replays_incomplete: int = 0
    replay_messages: int = 0

    @property
    def connections_open(self) -> int:
        return self.connections_opened - sum(self.connections_closed.values())

    def slow_consumer(self) -> None:
        self.slow_consumers += 1
        self.slow_recent.append(time.monotonic())

    def recent_slow_consumers(self) -> int:
        horizon = time.monotonic() - RECENT_WINDOW_SECONDS
        while self.slow_recent and self.slow_recent[0] < horizon:
            self.slow_recent.popleft()
        return len(self.slow_recent)


class Collector:
    """Renders :class:`Stats`, the hub and readiness as Prometheus families."""

    def __init__(
        self, stats: Stats, hub: Hub, readiness: Readiness, state: State | None = None
    ) -> None:
        self.stats = stats
        self.delivery = stats.delivery
        self.hub = hub
        self.readiness = readiness
        self.state = state

    def collect(self) -> Iterator[Metric]:
        yield from self._process()
        yield from self._connections()
        yield from self._delivery()
        yield from self._replays()
        yield from self._kafka()
        yield from self._state()

    def _state(self) -> Iterator[Metric]:
        """Per state topic: what the store holds, and the snapshots it gave."""
        topics = self.state.topics if self.state is not None else {}
        s = self.stats
        families: list[tuple[type, str, str, Callable[[str], float]]] = [
            (GaugeMetricFamily, "wsrt_state_keys", "Keys held per state topic.",
             lambda t: len(topics[t].entries)),
            (GaugeMetricFamily, "wsrt_state_bytes",
             "Bytes held per state topic (frames, keys, overhead).", lambda t: topics[t].bytes),
            (CounterMetricFamily, "wsrt_state_evictions",
             "Keys evicted by WS_STATE_MAX_KEYS / _BYTES.", lambda t: topics[t].evicted),
            (CounterMetricFamily, "wsrt_snapshots",
             "Snapshots given (subscribe with snapshot), by topic.", lambda t: s.snapshots[t]),
            (CounterMetricFamily, "wsrt_snapshot_keys", "Keys sent in snapshots, by topic.",
             lambda t: s.snapshot_keys[t]),
            (CounterMetricFamily, "wsrt_snapshot_seconds",
             "Seconds from a snapshot's subscribe to its snapshot_end (divide by the count).",
             lambda t: s.snapshot_seconds[t]),
        ]  # fmt: skip
        for kind, name, text, value in families:
            family = kind(name, text, labels=["topic"])
            for topic in sorted(topics):
                family.add_metric([topic], value(topic))
            yield family

    def _replays(self) -> Iterator[Metric]:
        s = self.stats
        yield GaugeMetricFamily(
            "wsrt_replays_running", "Replays reading history from Kafka now.",
            value=s.replays_running,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "wsrt_replays_waiting", "Replays waiting for one of WS_REPLAY_CONCURRENCY slots.",
            value=s.replays_waiting,
        )  # fmt: skip
        yield CounterMetricFamily(
            "wsrt_replays_completed", "Replays that handed over to the live stream.",
            value=s.replays_completed,
        )  # fmt: skip
        yield CounterMetricFamily(
            "wsrt_replays_cancelled",
            "Replays ended before the live stream: unsubscribed, disconnected or failed.",
            value=s.replays_cancelled,
        )
        yield CounterMetricFamily(
            "wsrt_replays_incomplete",
            "Replays answered complete=false: history removed by retention or over "
            "WS_REPLAY_MAX_MESSAGES.",
            value=s.replays_incomplete,
        )
        yield CounterMetricFamily(
            "wsrt_replay_messages", "Messages delivered from history by replays.",
            value=s.replay_messages,
        )  # fmt: skip

    def _process(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("wsrt_build_info", "Version of this wsrt.", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        ready = GaugeMetricFamily(
            "wsrt_ready", "1 when /healthz answers 200, else 0.", labels=["status"]
        )
        ready.add_metric([str(self.readiness.status)], 1 if self.readiness.ready else 0)
        yield ready

    def _connections(self) -> Iterator[Metric]:
        s = self.stats
        yield GaugeMetricFamily(
            "wsrt_connections", "Open connections: WebSocket and SSE streams.",
            value=s.connections_open,
        )  # fmt: skip
        yield CounterMetricFamily(
            "wsrt_connections_opened", "Connections accepted: WebSocket and SSE streams.",
            value=s.connections_opened,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "wsrt_sse_streams", "Open SSE streams (/sse; counted in wsrt_connections too).",
            value=s.sse_opened - s.sse_closed,
        )  # fmt: skip
        yield _by_reason(
            "wsrt_connections_closed", "WebSocket connections closed, by reason.",
            CLOSE_REASONS, s.connections_closed,
        )  # fmt: skip
        rejected = CounterMetricFamily(
            "wsrt_handshakes_rejected",
            "Upgrades refused before the handshake, by reason (401 kinds, origin, draining).",
            labels=["reason"],
        )
        for reason, count in sorted(s.handshakes_rejected.items()):
            rejected.add_metric([reason], count)
        yield rejected
        yield CounterMetricFamily(
            "wsrt_slow_consumer_disconnects",
            "Clients closed with 1008 slow consumer.",
            value=s.slow_consumers,
        )
        yield GaugeMetricFamily(
            "wsrt_slow_consumer_disconnects_recent",
            f"Slow-consumer disconnects in the last {RECENT_WINDOW_SECONDS:.0f} seconds.",
            value=s.recent_slow_consumers(),
        )
        yield from self._policies()
        subscriptions = GaugeMetricFamily(
            "wsrt_subscriptions",
            "Subscriptions by topic (topic:key channels counted under their topic).",
            labels=["topic"],
        )
        for topic in sorted(self.hub.topics):
            subscriptions.add_metric([topic], self.hub.subscription_count(topic))
        yield subscriptions

    def _policies(self) -> Iterator[Metric]:
        """Slow-consumer policy outcomes by topic (docs/design.md, "A slow client harms nobody")."""
        d = self.delivery
        families = (
            (d.disconnects, "wsrt_slow_consumer_closes",
             "Clients closed 1008 slow consumer, by the topic whose message overflowed their "
             "queue (disconnect; conflate with more distinct keys waiting than WS_CLIENT_BUFFER)."),
            (d.not_delivered, "wsrt_slow_consumer_messages_not_delivered",
             "Messages slow clients did not get: replaced by a newer value of their key "
             "(conflate) or discarded inside a gap (drop)."),
            (d.notices, "wsrt_slow_consumer_notices",
             "conflated and gap notices sent to clients that fell WS_CLIENT_BUFFER behind."),
        )  # fmt: skip
        for counts, name, documentation in families:
            family = CounterMetricFamily(name, documentation, labels=["topic", "policy"])
            for topic in sorted(self.hub.topics):
                policy = self.hub.policy(topic)
                family.add_metric([topic, policy], counts[(topic, policy)])
            yield family

    def _delivery(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "wsrt_frames_delivered",
            "Frames written to client sockets (messages and control replies).",
            value=self.delivery.frames,
        )
        yield CounterMetricFamily(
            "wsrt_bytes_sent", "Bytes of frames written to clients.", value=self.delivery.bytes
        )
        yield CounterMetricFamily(
            "wsrt_client_write_errors",
            "Writes to a client socket that raised; that client was closed 1011.",
            value=self.delivery.write_errors,
        )

    def _kafka(self) -> Iterator[Metric]:
        s = self.stats
        consumed = CounterMetricFamily(
            "wsrt_kafka_messages",
            "Kafka messages consumed (valid or not), by topic.",
            labels=["topic"],
        )
        skipped = CounterMetricFamily(
            "wsrt_kafka_skipped_records",
            "Kafka records not delivered (not_json, not_text, empty, tombstone, undecodable), "
            "by topic.",
            labels=["topic", "reason"],
        )
        for topic in sorted(self.hub.topics):
            consumed.add_metric([topic], s.kafka_messages[topic])
            for reason in SKIP_REASONS:
                skipped.add_metric([topic, reason], s.kafka_skipped[(topic, reason)])
        yield consumed
        yield skipped
        yield _by_reason(
            "wsrt_kafka_consumer_restarts",
            "Kafka consumers replaced: stalled (records waiting, none delivered), "
            "loop_stalled (the fetch loop stopped turning), error (an unexpected exception).",
            RESTART_REASONS, s.kafka_restarts,
        )  # fmt: skip
        lag = GaugeMetricFamily(
            "wsrt_kafka_lag",
            "Messages behind the partition's high watermark.",
            labels=["topic", "partition"],
        )
        for (topic, partition), value in sorted(s.kafka_lag.items()):
            lag.add_metric([topic, str(partition)], value)
        yield lag
        yield GaugeMetricFamily(
            "wsrt_kafka_last_commit_timestamp_seconds",
            "UNIX time of the last successful offset commit (0: none yet).",
            value=s.kafka_last_commit,
        )
        yield CounterMetricFamily(
            "wsrt_kafka_rebalances", "Partition assignments received.", value=s.kafka_rebalances
        )
        yield s.delay.family(
            "wsrt_delivery_delay_seconds",
            "From the Kafka record timestamp to hand-off to the client sockets.",
        )


class Metrics:
    """The registry behind ``GET /metrics``."""

    def __init__(self, collector: Collector) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Exposition text → ``{(sample name, sorted labels): value}``."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _by_reason(
    name: str, help: str, reasons: Iterable[str], counts: Mapping[str, int]
) -> CounterMetricFamily:
    """A counter with one sample per reason, 0 for those that never happened."""
    family = CounterMetricFamily(name, help, labels=["reason"])
    for reason in reasons:
        family.add_metric([reason], counts.get(reason, 0))
    return family


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> float:
    """Sum of a sample over all its label sets."""
    return sum(v for (n, _), v in samples.items() if n == name)
