"""Server-Sent Events, Sans-I/O (wsrt/sse.py): position tokens, events, plans."""

from __future__ import annotations

import json
import random

import pytest

from wsrt import protocol
from wsrt.sse import (
    Events,
    Plan,
    PlanError,
    Stream,
    TokenError,
    decode_positions,
    encode_positions,
    plan,
)
from wsrt.wire import delete_frame, record_frame, text_frame


def test_a_position_token_round_trips_any_channel_name() -> None:
    rng = random.Random(7)
    alphabet = "az09_-.:;=,%~ \n\"'é😀/"
    for _ in range(300):
        positions = {
            "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))): {
                rng.randrange(50): rng.randrange(2**63) for _ in range(rng.randint(0, 4))
            }
            for _ in range(rng.randint(0, 3))
        }
        token = encode_positions(positions)
        assert "\n" not in token and "\r" not in token and token.isascii()
        assert decode_positions(token) == positions


@pytest.mark.parametrize(
    "token",
    ["", "2;a=0:1", "1;a=0:1;a=1:2", "1;a=0:-1", "1;a=01:1", "1;a=0:1,0:2", "1;=0:1",
     "1;a", "1;a=0:99999999999999999999", "1;" + "a" * 9000],
)  # fmt: skip
def test_what_is_not_a_position_token_is_refused(token: str) -> None:
    with pytest.raises(TokenError):
        decode_positions(token)


def events_of(stream: Stream, *frames: bytes) -> list[tuple[str, str | None]]:
    """(event, id or None) of what ``stream`` sends for ``frames``."""
    body = stream.encode(b"".join(frames)).split(b"\r\n", 1)[1].rsplit(b"\r\n", 1)[0]
    out = []
    for block in body.decode().split("\n\n")[:-1]:
        fields = dict(line.split(": ", 1) for line in block.split("\n") if line[:5] != "data:")
        out.append((fields["event"], fields.get("id")))
    return out


def test_ids_follow_the_subscribed_positions_and_each_record() -> None:
    stream = Stream(Events())
    subscribed = text_frame(protocol.subscribed_reply("book", None, {0: 5, 1: 9}))
    assert events_of(stream, subscribed) == [("subscribed", "1;book=0:5,1:9")]
    got = events_of(
        stream,
        record_frame("book", b"k", 1, 9, 1, b"{}"),
        text_frame(protocol.pong_reply("p")),
        delete_frame("book", b"k", 0, 5, 2),
        record_frame("book", b"k", 0, 3, 1, b"{}"),  # below the position: a snapshot value
    )
    assert got == [("message", "1;book=0:5,1:10"), ("pong", None), ("delete", "1;book=0:6,1:10"),
                   ("message", None)]  # fmt: skip
    assert events_of(stream, text_frame(protocol.unsubscribed_reply("book", None))) == [
        ("unsubscribed", "1")
    ]


def test_a_snapshot_stays_out_of_the_token_until_it_ends() -> None:
    stream = Stream(Events(), Plan([], frozenset({"book"}), {}))
    stream.positions["other"] = {0: 1}
    assert events_of(stream, text_frame(protocol.subscribed_reply("book", None, {0: 5}))) == [
        ("subscribed", None)
    ]
    assert events_of(stream, record_frame("book", b"k", 0, 7, 1, b"{}")) == [("message", None)]
    assert events_of(stream, record_frame("other", None, 0, 1, 1, b"{}")) == [
        ("message", "1;other=0:2")
    ]
    end = text_frame(protocol.snapshot_end_reply("book", 1, True))
    assert events_of(stream, end) == [("snapshot_end", "1;other=0:2;book=0:5")]


def test_a_value_with_line_breaks_becomes_several_data_lines() -> None:
    body = Stream(Events()).encode(record_frame("t", None, 0, 0, 1, b'{"a":\r\n1,\n"b":2}'))
    assert (
        b'data: {"type":"message"' in body and b'"data":{"a":\ndata: 1,\ndata: "b":2}}\n\n' in body
    )


def test_a_run_is_turned_into_events_once_for_every_stream() -> None:
    events = Events()
    run = record_frame("t", None, 0, 0, 1, b"1") + record_frame("t", None, 0, 1, 1, b"2")
    first, second = Stream(events), Stream(events)
    assert first.encode(run) == second.encode(run)
    assert events.made == 1
    assert first.encode(bytes(bytearray(run))) and events.made == 2  # equal bytes, another run


def test_a_plan_subscribes_each_channel_from_the_token_or_the_query() -> None:
    token = encode_positions({"a": {0: 4}, "gone": {0: 1}})
    made = plan(["a", "b:k"], {"snapshot": ["true"], "filter": ['{"field":"key","eq":"k"}']}, token)
    a, b = made.subscribes
    assert a.start == protocol.Snapshot(protocol.Since({0: 4}))  # resumed, a snapshot only if gone
    assert b.start == protocol.Snapshot() and made.snapshots == {"b:k"}
    assert a.filter == {"field": "key", "eq": "k"} and made.resumed == {"a": {0: 4}}
    live = plan(["a"], {}, None).subscribes[0]
    assert live.start == protocol.Since({})  # live, told where it starts
    rewound = plan(["a"], {"rewind": ["5"], "last_event_id": ["1;a=0:2"]}, None).subscribes[0]
    assert rewound.start == protocol.Since({0: 2})  # the token wins over rewind
    for channels, query, said in [
        ([], {}, "name the channels"),
        (["a"], {"rewind": ["x"]}, "rewind must be an integer"),
        (["a"], {"rewind": ["1"], "since_time": ["2"]}, "a: give at most one of"),
        (["a"], {"filter": ["{"]}, "filter must be JSON"),
        (["a"], {"last_event_id": ["x"]}, "Last-Event-ID is not a position token"),
    ]:
        with pytest.raises(PlanError, match=said):
            plan(channels, query, None)


def test_subscriptions_give_each_channel_its_own_subscribe() -> None:
    objects = [
        {"channel": "a", "id": 1, "since": {"0": 7}, "filter": {"field": "key", "eq": "k"}},
        {"channel": "b:k", "id": 2, "snapshot": True},
        {"channel": "c", "id": 3},
    ]
    made = plan([], {"subscriptions": [json.dumps(objects)]}, encode_positions({"c": {1: 9}}))
    a, b, c = made.subscribes
    assert (a.id, a.start, a.filter) == (1, protocol.Since({0: 7}), {"field": "key", "eq": "k"})
    assert (b.id, b.start) == (2, protocol.Snapshot()) and made.snapshots == {"b:k"}
    assert (c.id, c.start) == (3, protocol.Since({1: 9}))  # the token's position wins
    assert plan([], {"subscriptions": ["[]"]}, None).subscribes == []  # nothing yet
    for query, said in [
        ({"subscriptions": ["{}"]}, "at most 1000"),
        ({"subscriptions": ['[{"channel": 1}]']}, r"subscriptions\[0\]"),
        ({"subscriptions": ['[{"channel":"a"}]'], "rewind": ["1"]}, "not both"),
        ({"subscriptions": ['[{"channel":"a","rewind":-1}]']}, "a: 'rewind' must be"),
    ]:
        with pytest.raises(PlanError, match=said):
            plan([], query, None)


def test_key_channels_of_one_topic_keep_their_own_positions() -> None:
    """The hub may write two key channels of a batch apart (b's record, then a's older
    one): each channel's position moves only with its own records."""
    stream = Stream(Events())
    for channel in ("t:a", "t:b"):
        events_of(stream, text_frame(protocol.subscribed_reply(channel, None, {0: 3})))
    got = events_of(
        stream, record_frame("t", b"b", 0, 5, 1, b"{}"), record_frame("t", b"a", 0, 3, 1, b"{}")
    )
    assert got == [("message", "1;t%3Aa=0:3;t%3Ab=0:6"), ("message", "1;t%3Aa=0:4;t%3Ab=0:6")]
    assert events_of(stream, record_frame("t", b"c", 0, 7, 1, b"{}")) == [("message", None)]
