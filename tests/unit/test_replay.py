"""Replay planning, start-field parsing and the hub's gate (design section 10), as plain calls."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.test_hub import MemoryOutlet, rec
from tests.unit.test_session import send, session
from wsrt import protocol
from wsrt.hub import Gate, Hub
from wsrt.protocol import ProtocolError, Rewind, Since, SinceTime
from wsrt.replay import Bounds, KeyScan, Plan, fit, plan, scan_window

# -- parsing -------------------------------------------------------------------


def parse(**fields: object) -> protocol.Control:
    return protocol.parse_control(json.dumps({"type": "subscribe", "channel": "lines", **fields}))


def test_start_fields_parse() -> None:
    assert parse(since={"0": 12, "3": 0}).start == Since({0: 12, 3: 0})  # type: ignore[union-attr]
    assert parse(since_time=1764120000000).start == SinceTime(1764120000000)  # type: ignore[union-attr]
    assert parse(rewind=50).start == Rewind(50)  # type: ignore[union-attr]
    assert parse().start is None  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "fields",
    [
        {"since": {"-1": 0}}, {"since": {"01": 0}}, {"since": {" 1": 0}}, {"since": {"0": -1}},
        {"since": {"0": 1.0}}, {"since": {"0": "5"}}, {"since": {"0": True}}, {"since": 5},
        {"since_time": -1}, {"since_time": 1.5}, {"since_time": None}, {"rewind": "3"},
        {"rewind": False}, {"since": {}, "rewind": 1},
    ],
)  # fmt: skip
def test_bad_start_fields(fields: dict[str, object]) -> None:
    with pytest.raises(ProtocolError) as caught:
        protocol.parse_control(
            json.dumps({"type": "subscribe", "channel": "lines", "id": 7, **fields})
        )
    assert caught.value.code == protocol.BAD_REQUEST
    assert caught.value.request_id == 7 and caught.value.channel == "lines"


def test_subscribed_reply_carries_positions_and_complete() -> None:
    reply = json.loads(protocol.subscribed_reply("lines", "1", {1: 88, 0: 1234}, False))
    assert reply == {
        "type": "subscribed", "channel": "lines", "id": "1",
        "positions": {"0": 1234, "1": 88}, "complete": False,
    }  # fmt: skip


# -- planning ------------------------------------------------------------------


def test_fit_keeps_ranges_within_the_budget() -> None:
    assert fit({0: (5, 10), 1: (0, 3)}, 100) == ({0: 5, 1: 0}, True)
    # 3 + 10 + 50 over 20: the small range keeps its 3, the others share 17.
    assert fit({0: (0, 3), 1: (0, 10), 2: (0, 50)}, 20) == ({0: 0, 1: 2, 2: 41}, False)


@given(
    st.dictionaries(
        st.integers(0, 5),
        st.tuples(st.integers(0, 1000), st.integers(0, 1000)).map(sorted),
        max_size=6,
    ),
    st.integers(0, 3000),
)
def test_fit_never_reads_more_than_the_budget(ranges: dict[int, list[int]], budget: int) -> None:
    spans = {p: (lo, hi) for p, (lo, hi) in ranges.items()}
    starts, complete = fit(spans, budget)
    assert sum(spans[p][1] - starts[p] for p in spans) <= budget
    assert all(spans[p][0] <= starts[p] <= spans[p][1] for p in spans)
    assert complete == (sum(hi - lo for lo, hi in spans.values()) <= budget)


BOUNDS = {0: Bounds(0, 100), 1: Bounds(40, 60)}


def test_since_clamps_and_unnamed_partitions_start_live() -> None:
    assert plan(Since({0: 90}), BOUNDS, {0: 100, 1: 55}, 1000) == Plan({0: 90, 1: 55}, True)
    # Partition 1 asks for offsets retention removed; past the end starts at the end.
    assert plan(Since({0: 500, 1: 10}), BOUNDS, {0: 100, 1: 60}, 1000) == Plan(
        {0: 100, 1: 40}, False
    )


def test_since_time_and_rewind() -> None:
    assert plan(SinceTime(5), BOUNDS, {}, 1000, {0: 70, 1: None}) == Plan({0: 70, 1: 60}, True)
    # The first record at or after the time is the oldest kept: history may be gone.
    assert plan(SinceTime(5), BOUNDS, {}, 1000, {0: 0, 1: 40}).complete is False
    assert plan(Rewind(10), BOUNDS, {}, 1000) == Plan({0: 90, 1: 50}, True)
    assert plan(Rewind(30), BOUNDS, {}, 1000) == Plan({0: 70, 1: 40}, False)
    assert plan(Rewind(30), {0: Bounds(0, 10)}, {}, 1000) == Plan({0: 0}, True)
    # 50 + 20 over a budget of 30: an equal share of 15 each.
    assert plan(Rewind(50), BOUNDS, {}, 30) == Plan({0: 85, 1: 45}, False)


def test_key_scan_finds_the_last_n_of_the_key() -> None:
    window = scan_window({0: Bounds(0, 100), 1: Bounds(0, 100)}, 120)
    assert window.starts == {0: 40, 1: 40} and not window.complete
    scan = KeyScan(2, window, {0: 100, 1: 100})
    for offset in (41, 50, 77):
        scan.matched(0, offset)
    scan.matched(1, 99)
    # Partition 1 has one match and older records were not scanned: incomplete.
    assert scan.plan() == Plan({0: 50, 1: 99}, False)
    whole = scan_window({0: Bounds(0, 10)}, 120)
    empty = KeyScan(3, whole, {0: 10})
    assert empty.plan() == Plan({0: 10}, True)


# -- the gate ------------------------------------------------------------------


def test_gate_holds_then_drops_duplicates_below_the_floor() -> None:
    gate = Gate(None, [0, 1])
    assert not gate.admits(0, 5) and not gate.admits(1, 5)
    gate.join(0, 8)
    assert not gate.admits(0, 7) and gate.admits(0, 8) and gate.admits(0, 7) is True
    assert not gate.settled
    gate.join(1, None)
    assert gate.admits(1, 3) and gate.admits(2, 0) and gate.settled


def test_a_gate_made_before_the_live_stream_is_positioned_holds_every_partition() -> None:
    gate = Gate(None, None)
    assert not any(gate.admits(p, 0) for p in range(5)) and not gate.settled
    gate.hold([0])  # the live stream was positioned: partition 0 is replayed, 1 is live
    assert not gate.admits(0, 9) and gate.admits(1, 0)
    gate.join(0, None)
    assert gate.admits(0, 9) and gate.settled


def test_hub_routes_a_gated_subscription_and_settles_it() -> None:
    hub = Hub(["lines"])
    live, replaying = MemoryOutlet(), MemoryOutlet()
    hub.subscribe(live, "lines")
    gate = Gate(None, [0])
    hub.subscribe(replaying, "lines", gate=gate)
    assert hub.subscription_count("lines") == 2
    hub.publish([rec("lines", None, 1), rec("lines", None, 1, partition=1)])
    assert replaying.writes == [b"<lines:None:1>"]  # partition 1 is not replayed
    gate.join(0, 3)
    hub.publish([rec("lines", None, n) for n in (2, 3, 4)])
    assert replaying.received == b"<lines:None:1><lines:None:3><lines:None:4>"
    assert gate.settled and hub._gated == {}
    hub.publish([rec("lines", None, 5)])  # the ordinary route now: one joined write
    assert replaying.writes[-1] == b"<lines:None:5>"
    assert live.frames_sent == 6


def test_a_gated_key_subscription_takes_its_key_only() -> None:
    hub = Hub(["order_book"])
    outlet = MemoryOutlet()
    gate = Gate("BTC", [])
    gate.floors[0] = 2
    hub.subscribe(outlet, "order_book", "BTC", gate)
    hub.publish([rec("order_book", "BTC", 1), rec("order_book", "ETH", 2)])
    hub.publish([rec("order_book", "BTC", 3), rec("order_book", "ETH", 4)])
    assert outlet.received == b"<order_book:BTC:3>"


def test_a_replaying_whole_topic_is_not_doubled_by_its_key_routes() -> None:
    hub = Hub(["order_book"])
    other, outlet = MemoryOutlet(), MemoryOutlet()
    hub.subscribe(other, "order_book", "BTC")
    hub.subscribe(outlet, "order_book", gate=Gate(None, []))
    hub.subscribe(outlet, "order_book", "BTC")  # the session refuses this; the hub stays once
    hub.publish([rec("order_book", "BTC", 1)])
    assert outlet.frames_sent == 1 and other.frames_sent == 1
    hub.unsubscribe(outlet, "order_book")
    assert hub.subscription_count("order_book") == 2


# -- the session's rules -------------------------------------------------------


def test_session_replays_instead_of_replying_and_refuses_overlaps() -> None:
    s = session()
    effects = send(s, {"type": "subscribe", "channel": "order_book:BTC", "id": 1, "rewind": 3})
    assert effects.replies == [] and effects.subscribe == []
    assert [(r.channel.name, r.start, r.id) for r in effects.replay] == [
        ("order_book:BTC", Rewind(3), 1)
    ]
    refused = send(s, {"type": "subscribe", "channel": "order_book", "id": 2})
    assert json.loads(refused.replies[0])["code"] == "bad_request"
    again = send(s, {"type": "subscribe", "channel": "order_book:BTC", "id": 3, "rewind": 1})
    assert "already subscribed" in json.loads(again.replies[0])["message"]
    plain = send(s, {"type": "subscribe", "channel": "order_book:BTC", "id": 4})
    assert json.loads(plain.replies[0])["type"] == "subscribed"  # idempotent
    other_key = send(s, {"type": "subscribe", "channel": "order_book:ETH", "id": 5, "rewind": 1})
    assert other_key.replay and not other_key.replies
    s.forget("order_book:BTC")
    s.forget("order_book:ETH")
    assert send(s, {"type": "subscribe", "channel": "order_book", "id": 6}).subscribe


def test_the_replay_rate_limit_is_a_token_bucket() -> None:
    from wsrt.kafka.history import RateLimit

    now = [0.0]
    limit = RateLimit(1000, clock=lambda: now[0])
    assert limit.allowance(200) == (200, 0.0)  # one second of burst
    limit.took(1000)
    allowed, wait = limit.allowance(200)
    assert allowed == 0 and wait == pytest.approx(0.001)
    now[0] += 0.05
    assert limit.allowance(200) == (50, 0.0)
    limit.took(60)  # a read may return a little more than allowed: owed, not lost
    now[0] += 0.005
    assert limit.allowance(200)[0] == 0
