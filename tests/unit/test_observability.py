from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
from pathlib import Path

import pytest
import yaml

from wsrt.health import Readiness
from wsrt.hub import Hub
from wsrt.logs import EventLogger, JsonFormatter, LibraryFlood, RateLimited, TextFormatter
from wsrt.metrics import Collector, DelayHistogram, Metrics, Stats, close_reason, parse

ROOT = Path(__file__).resolve().parents[2]


def exported_names() -> set[str]:
    stats = Stats()
    stats.kafka_lag[("lines", 0)] = 1
    stats.handshakes_rejected["expired"] += 1
    metrics = Metrics(Collector(stats, Hub(["lines"]), Readiness()))
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    return {name for name, _ in parse(body.decode())}


def expressions() -> list[str]:
    dashboard = json.loads((ROOT / "infrastructure/grafana/ws-realtime-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    alerts = yaml.safe_load((ROOT / "infrastructure/prometheus/alerts.yml").read_text())
    exprs += [r["expr"] for g in alerts["groups"] for r in g["rules"]]
    return exprs


def test_dashboard_and_alerts_use_only_exported_metrics() -> None:
    names = exported_names()
    used = {m for e in expressions() for m in re.findall(r"\bwsrt_[a-z_]+", e)}
    assert used, "no wsrt metric referenced"
    assert used <= names, f"not exported: {sorted(used - names)}"


def test_expressions_are_balanced() -> None:
    for expr in expressions():
        depth = 0
        for char in expr:
            depth += {"(": 1, ")": -1, "[": 1, "]": -1, "{": 1, "}": -1}.get(char, 0)
            assert depth >= 0, expr
        assert depth == 0, expr


def test_every_alert_is_actionable() -> None:
    alerts = yaml.safe_load((ROOT / "infrastructure/prometheus/alerts.yml").read_text())
    rules = [r for g in alerts["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} >= {
        "WsrtNotReady", "WsrtConsumerLagGrowing", "WsrtNoMessagesConsumed", "WsrtSlowConsumerStorm",
    }  # fmt: skip
    for rule in rules:
        assert rule["for"] and rule["labels"]["severity"] in {"page", "warn"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


@pytest.mark.parametrize(
    ("code", "reason", "label"),
    [(1000, "", "normal"), (1005, None, "normal"), (1008, "slow consumer", "slow_consumer"),
     (1008, "token expired", "token_expired"), (1001, "server shutting down", "shutdown"),
     (1008, "rate limit exceeded", "policy"), (1009, "", "policy"), (1006, None, "error"),
     (None, None, "error")],
)  # fmt: skip
def test_close_reasons(code, reason, label) -> None:
    assert close_reason(code, reason) == label


def test_a_client_going_away_is_not_a_server_shutdown() -> None:
    assert close_reason(1001, "", by_server=False) == "client_going_away"
    assert close_reason(1001, "server shutting down", by_server=True) == "shutdown"
    assert close_reason(1000, "", by_server=False) == "normal"


def test_delay_histogram_is_cumulative() -> None:
    h = DelayHistogram((0.01, 0.1))
    h.observe_ms(1000.0, [995, 950, 100, 1200])  # 5 ms, 50 ms, 900 ms, clock skew → 0
    family = h.family("d", "delay")
    buckets = {s.labels["le"]: s.value for s in family.samples if s.name == "d_bucket"}
    assert buckets == {"0.01": 2, "0.1": 3, "+Inf": 4}
    assert [s.value for s in family.samples if s.name == "d_sum"] == [pytest.approx(0.955)]


def record(name: str = "wsrt", msg: str = "connection closed", **fields) -> logging.LogRecord:
    r = logging.LogRecord(name, logging.INFO, __file__, 1, msg, None, None)
    r.wsrt_event = "connection_closed"
    r.wsrt_fields = fields
    return r


def test_text_lines_have_the_prefix_and_fields() -> None:
    line = TextFormatter().format(record(subject="alice", code=1008, reason="slow consumer"))
    assert line.startswith("[ws-realtime] ")
    assert line.endswith('INFO connection closed subject=alice code=1008 reason="slow consumer"')


def test_json_lines_are_objects_with_stable_fields() -> None:
    obj = json.loads(JsonFormatter().format(record(subject="alice", duration_ms=12, remote=None)))
    assert obj["event"] == "connection_closed" and obj["level"] == "info"
    assert obj["subject"] == "alice" and obj["duration_ms"] == 12
    assert "remote" not in obj and obj["ts"].endswith("Z")


#: One of each class a terminal acts on, as a hostile client would put it in a channel.
HOSTILE = {
    "C0 escape sequence": "lines:\x1b]0;pwned\x07\x1b[2J",
    "newline (a forged second line)": "lines\n[ws-realtime] 2026 INFO connection opened",
    "carriage return": "lines\rOK",
    "DEL": "lines\x7f",
    "C1 CSI": "lines\x9b31m",
    "bidi override": "lines:\u202eEVIL",
    "bidi isolate": "lines:\u2066x\u2069",
    "line separator": "lines\u2028x",
}
#: Every field that carries what a client sent or is.
CLIENT_FIELDS = ("subject", "channel", "remote", "origin", "reason", "error", "id")
TERMINAL_CONTROLS = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)


@pytest.mark.parametrize("kind", list(HOSTILE))
@pytest.mark.parametrize("field", CLIENT_FIELDS)
def test_no_terminal_control_reaches_a_log_line(kind: str, field: str) -> None:
    value = HOSTILE[kind]
    text = TextFormatter().format(record(**{field: value}))
    assert not TERMINAL_CONTROLS.search(text), text
    assert f'{field}="' in text  # quoted: a reader sees where the value ends
    line = JsonFormatter().format(record(**{field: value}))
    assert not TERMINAL_CONTROLS.search(line), line
    assert json.loads(line)[field] == value  # escaped, not altered


def library_record(msg: str = "Heartbeat failed for group %s") -> logging.LogRecord:
    return logging.LogRecord("aiokafka.consumer", logging.ERROR, "", 1, msg, ("g",), None)


def test_library_floods_are_cut_with_a_count() -> None:
    flood = LibraryFlood(interval=60)
    lines = [library_record() for _ in range(5)]
    assert [flood.filter(r) for r in lines] == [True, False, False, False, False]
    assert flood.filter(record()) is True  # wsrt's own lines are never cut


def test_library_lines_that_readiness_says_in_plain_words_are_dropped() -> None:
    flood = LibraryFlood(interval=60)
    refused = library_record('Unable connect to "%s:%s": %s')
    refused.name = "aiokafka.client"
    assert flood.filter(refused) is False


class Collect(logging.Handler):
    """Records reaching a handler, with a threading event per arrival."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.arrived = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.arrived.set()


def test_a_suppressed_library_line_is_written_when_nothing_follows() -> None:
    flood, sink = LibraryFlood(interval=0.05), Collect()
    sink.addFilter(flood)
    logger = logging.getLogger("aiokafka.flushtest")
    logger.addHandler(sink)
    logger.propagate = False
    try:
        for n in range(4):
            logger.error("Heartbeat failed: attempt %s", n)
        assert [r.args for r in sink.records] == [(0,)]
        sink.arrived.clear()
        assert sink.arrived.wait(10), "the held line never came"
        last = sink.records[-1]
        assert last.args == (3,) and last.wsrt_fields == {"suppressed": 2}
    finally:
        logger.removeHandler(sink)


async def test_a_rate_limited_event_is_reported_when_nothing_follows() -> None:
    sink = Collect()
    arrived = asyncio.Event()
    sink.emit = lambda r: (sink.records.append(r), arrived.set())  # type: ignore[method-assign]
    logger = logging.getLogger("wsrt.flushtest")
    logger.addHandler(sink)
    logger.setLevel(logging.INFO)
    try:
        limited = RateLimited(EventLogger("wsrt.flushtest"), interval=0.05)
        for n in range(4):
            limited.warning("handshake_rejected", "rejected", n=n)
        assert [r.wsrt_fields for r in sink.records] == [{"n": 0}]
        arrived.clear()
        await asyncio.wait_for(arrived.wait(), 10)
        assert sink.records[-1].wsrt_fields == {"n": 3, "suppressed": 2}
    finally:
        logger.removeHandler(sink)


def test_event_logger_respects_level(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="wsrt")
    log = EventLogger()
    log.info("x", "hidden")
    log.warning("y", "shown", a=1)
    assert [r.getMessage() for r in caplog.records] == ["shown"]


def test_liveness_follows_the_loop_heartbeat() -> None:
    from wsrt.health import Liveness

    now = [100.0]
    live = Liveness(60, lambda: now[0])
    now[0] = 159.0
    assert live.alive
    now[0] = 161.0
    assert not live.alive and live.silent_for == 61.0
    live.beat()
    assert live.alive
