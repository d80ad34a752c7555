"""Slow-consumer policies in the hub (design section 11): disconnect, conflate, drop."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsrt.config import load_settings
from wsrt.errors import ConfigError
from wsrt.hub import Hub
from wsrt.outlet import CONFLATE, DISCONNECT, DROP, SLOW_CONSUMER, Outlet, Record
from wsrt.tools.client import describe_notice
from wsrt.wire import record_frame


class Client(Outlet):
    """An outlet whose transport is a byte string, read back as parsed frames."""

    def __init__(self, limit: int = 4) -> None:
        self.data = bytearray()
        super().__init__(self.data.extend, limit)

    @property
    def frames(self) -> list[dict[str, Any]]:
        out, data, i = [], bytes(self.data), 0
        while i < len(data):
            assert data[i] == 0x81
            n, i = data[i + 1], i + 2
            if n == 126:
                n, i = int.from_bytes(data[i : i + 2], "big"), i + 2
            out.append(orjson.loads(data[i : i + n]))
            i += n
        return out

    def kinds(self) -> list[str]:
        return [f["type"] for f in self.frames]


def rec(topic: str, key: str | None, offset: int, partition: int = 0) -> Record:
    value = orjson.dumps({"n": offset})
    k = key.encode() if key is not None else None
    return Record(topic, k, record_frame(topic, k, partition, offset, 0, value), partition, offset)


def hub_with(policy: str) -> Hub:
    return Hub(["lines", "order_book"], {"lines": policy, "order_book": policy})


def test_a_client_that_keeps_up_gets_every_message_under_each_policy() -> None:
    for policy in (DISCONNECT, CONFLATE, DROP):
        hub, a = hub_with(policy), Client(limit=2)
        hub.subscribe(a, "order_book")
        hub.publish([rec("order_book", "BTC", n) for n in range(10)])
        assert [f["offset"] for f in a.frames] == list(range(10))


def test_conflate_keeps_the_newest_value_per_key_and_says_how_many_went() -> None:
    hub, slow, fast = hub_with(CONFLATE), Client(limit=3), Client(limit=3)
    for client in (slow, fast):
        hub.subscribe(client, "order_book")
    slow.pause()
    keys = ["BTC", "ETH", "BTC", "SOL", "ETH", "BTC"]
    for n, key in enumerate(keys):
        assert hub.publish([rec("order_book", key, n)]) == []
    assert slow.data == b"" and slow.queued == 3
    slow.resume()
    conflated, *values = slow.frames
    assert conflated == {"type": "conflated", "channel": "order_book", "dropped": 3}
    # newest per key, in the order of their offsets
    assert [(v["key"], v["offset"]) for v in values] == [("SOL", 3), ("ETH", 4), ("BTC", 5)]
    assert [f["offset"] for f in fast.frames] == list(range(6))
    assert slow.delivery.not_delivered[("order_book", CONFLATE)] == 3
    assert slow.delivery.notices[("order_book", CONFLATE)] == 1
    hub.publish([rec("order_book", "BTC", 6)])  # live again, no notice
    assert slow.frames[-1]["offset"] == 6 and slow.kinds().count("conflated") == 1


def test_conflate_counts_keyless_messages_each_and_disconnects_past_the_buffer() -> None:
    hub, slow = hub_with(CONFLATE), Client(limit=3)
    hub.subscribe(slow, "order_book")
    slow.pause()
    assert hub.publish([rec("order_book", None, n) for n in range(3)]) == []
    assert hub.publish([rec("order_book", None, 3)]) == [slow]
    assert slow.verdict == SLOW_CONSUMER
    assert slow.delivery.disconnects[("order_book", CONFLATE)] == 1


def test_conflate_without_a_repeated_key_sends_no_notice() -> None:
    hub, slow = hub_with(CONFLATE), Client(limit=3)
    hub.subscribe(slow, "order_book")
    slow.pause()
    hub.publish([rec("order_book", "BTC", 0), rec("order_book", "ETH", 1)])
    slow.resume()
    assert slow.kinds() == ["message", "message"]


def test_drop_sends_one_gap_per_partition_before_what_follows() -> None:
    hub, slow = hub_with(DROP), Client(limit=2)
    hub.subscribe(slow, "lines")
    slow.pause()
    batch = [rec("lines", None, n // 2, partition=n % 2) for n in range(10)]  # 0..4 on each
    assert hub.publish(batch) == []
    slow.resume()
    hub.publish([rec("lines", None, 5, partition=0), rec("lines", None, 5, partition=1)])
    frames = slow.frames
    assert [(f["type"], f["partition"]) for f in frames] == [
        ("message", 0), ("message", 1), ("gap", 0), ("gap", 1), ("message", 0), ("message", 1),
    ]  # fmt: skip
    assert frames[2] == {
        "type": "gap", "channel": "lines", "partition": 0, "from": 1, "to": 4, "dropped": 4,
    }  # fmt: skip
    assert frames[3]["from"] == 1 and frames[3]["to"] == 4
    assert slow.delivery.not_delivered[("lines", DROP)] == 8
    assert slow.verdict is None


def test_drop_never_lets_a_later_record_overtake_its_gap() -> None:
    # Unsubscribing a conflated channel frees room; the dropped partition must stay dropped.
    hub = Hub(["lines", "order_book"], {"lines": DROP, "order_book": CONFLATE})
    slow = Client(limit=2)
    hub.subscribe(slow, "lines")
    hub.subscribe(slow, "order_book")
    slow.pause()
    hub.publish([rec("order_book", "BTC", 0), rec("order_book", "ETH", 1)])
    hub.publish([rec("lines", None, 0)])  # no room: dropped
    hub.unsubscribe(slow, "order_book")
    hub.publish([rec("lines", None, 1)])
    slow.resume()
    assert [(f["type"], f.get("from"), f.get("to")) for f in slow.frames] == [("gap", 0, 1)]


def test_keyed_subscriptions_report_under_their_own_channel() -> None:
    hub, slow = hub_with(DROP), Client(limit=1)
    hub.subscribe(slow, "lines", "a")
    hub.subscribe(slow, "lines", "b")
    slow.pause()
    hub.publish([rec("lines", "a", 0), rec("lines", "b", 1), rec("lines", "a", 2)])
    hub.publish([rec("order_book", None, 0)])  # a second topic in the mix
    hub.publish([rec("lines", "b", 3), rec("order_book", None, 1)])
    slow.resume()
    gaps = [(f["channel"], f["from"], f["to"]) for f in slow.frames if f["type"] == "gap"]
    assert slow.frames[0]["offset"] == 0
    assert sorted(gaps) == [("lines:a", 2, 2), ("lines:b", 1, 3)]


def test_disconnect_stays_the_default_and_control_replies_never_overflow() -> None:
    hub, slow = Hub(["lines"]), Client(limit=2)
    assert hub.policy("lines") == DISCONNECT
    hub.subscribe(slow, "lines")
    slow.pause()
    hub.publish([rec("lines", None, 0), rec("lines", None, 1)])
    assert slow.send(b"\x81\x02{}") and slow.verdict is None  # the answer to its own request
    assert hub.publish([rec("lines", None, 2)]) == [slow]
    assert slow.delivery.disconnects[("lines", DISCONNECT)] == 1


def test_unsubscribing_forgets_what_was_held() -> None:
    hub, slow = hub_with(CONFLATE), Client(limit=2)
    hub.subscribe(slow, "order_book")
    slow.pause()
    hub.publish([rec("order_book", "BTC", 0), rec("order_book", "BTC", 1)])
    hub.unsubscribe(slow, "order_book")
    assert slow.queued == 0
    slow.resume()
    assert slow.data == b""


def scripts(publish: st.SearchStrategy[Any]) -> st.SearchStrategy[list[tuple[str, Any]]]:
    """Publishes (of what ``publish`` draws), pauses and resumes, in any order."""
    verbs = st.one_of(
        st.tuples(st.just("publish"), st.lists(publish, min_size=1, max_size=6)),
        st.tuples(st.just("pause"), st.none()),
        st.tuples(st.just("resume"), st.none()),
    )
    return st.lists(verbs, max_size=40)


def play(hub: Hub, client: Client, script: list[tuple[str, Any]], record: Any) -> None:
    """Run ``script``; ``record(drawn)`` makes each published record. Ends resumed."""
    for verb, drawn in script:
        if verb == "pause":
            client.pause()
        elif verb == "resume":
            client.resume()
        else:
            assert hub.publish([record(d) for d in drawn]) == []  # never a disconnect here
    client.resume()


@settings(max_examples=200, deadline=None)
@given(script=scripts(st.integers(0, 2)), limit=st.integers(1, 5))
def test_drop_accounts_for_every_offset_exactly(script: list[tuple[str, Any]], limit: int) -> None:
    hub, client = Hub(["lines"], {"lines": DROP}), Client(limit=limit)
    hub.subscribe(client, "lines")
    produced: dict[int, int] = {0: 0, 1: 0, 2: 0}

    def record(partition: int) -> Record:
        produced[partition] += 1
        return rec("lines", None, produced[partition] - 1, partition)

    play(hub, client, script, record)
    seen: dict[int, list[int]] = {0: [], 1: [], 2: []}
    for f in client.frames:
        if f["type"] == "message":
            seen[f["partition"]].append(f["offset"])
        else:
            assert f["type"] == "gap" and f["dropped"] == f["to"] - f["from"] + 1
            seen[f["partition"]].extend(range(f["from"], f["to"] + 1))
    for partition, count in produced.items():
        assert seen[partition] == list(range(count))  # in order, each exactly once


@settings(max_examples=200, deadline=None)
@given(script=scripts(st.sampled_from(["a", "b", "c", "d"])))
def test_conflate_ends_on_the_newest_value_of_every_key(script: list[tuple[str, Any]]) -> None:
    hub, client = Hub(["order_book"], {"order_book": CONFLATE}), Client(limit=4)
    hub.subscribe(client, "order_book")  # 4 keys never overflow a buffer of 4
    newest: dict[str, int] = {}

    def record(key: str) -> Record:
        newest[key] = offset = len(records)
        records.append(key)
        return rec("order_book", key, offset)

    records: list[str] = []
    play(hub, client, script, record)
    messages = [f for f in client.frames if f["type"] == "message"]
    offsets = [m["offset"] for m in messages]
    assert offsets == sorted(set(offsets))  # Kafka order, never twice
    assert {m["key"]: m["offset"] for m in messages} == newest
    dropped = sum(f["dropped"] for f in client.frames if f["type"] == "conflated")
    assert dropped + len(messages) == len(records)


def test_policies_are_validated_at_start() -> None:
    env = {"WS_TOPIC_POLICIES": "order_book=conflate, lines=DROP"}
    assert load_settings(environ=env, env_file=None).topic_policies == {
        "lines": DROP, "order_book": CONFLATE, "analytics": DISCONNECT,
    }  # fmt: skip
    env = {"WS_SLOW_CONSUMER_POLICY": "drop", "WS_TOPIC_POLICIES": "lines=disconnect"}
    assert load_settings(environ=env, env_file=None).topic_policies["analytics"] == DROP
    for bad, problem in [
        ("trades=drop", "names trades, which is not in WS_KAFKA_TOPICS"),
        ("lines=zap", "'zap' for lines is not one of disconnect, conflate, drop"),
        ("lines", "expected topic=policy pairs"),
        ("lines=drop,lines=conflate", "names lines twice"),
    ]:
        with pytest.raises(ConfigError) as err:
            load_settings(environ={"WS_TOPIC_POLICIES": bad}, env_file=None)
        assert err.value.variable == "WS_TOPIC_POLICIES" and problem in err.value.problem
    with pytest.raises(ConfigError) as err:
        load_settings(environ={"WS_SLOW_CONSUMER_POLICY": "conflated"}, env_file=None)
    assert err.value.variable == "WS_SLOW_CONSUMER_POLICY"


def test_tail_says_what_a_notice_means() -> None:
    gap = {"type": "gap", "channel": "lines", "partition": 1, "from": 7, "to": 9, "dropped": 3}
    assert describe_notice(gap) == (
        "gap: lines partition 1: 3 messages (offsets 7 to 9) were dropped because this "
        "client read too slowly; fetch them with --from-offsets 1=7"
    )
    conflated = {"type": "conflated", "channel": "order_book", "dropped": 5}
    assert (describe_notice(conflated) or "").startswith("conflated: order_book: 5 older values")
    assert describe_notice({"type": "message"}) is None
