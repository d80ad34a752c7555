from __future__ import annotations

import json

import pytest

from wsrt import protocol
from wsrt.protocol import (
    Ping,
    ProtocolError,
    Refresh,
    Subscribe,
    Unsubscribe,
    parse_control,
    pong_reply,
)


def test_parse_control_messages() -> None:
    assert parse_control('{"type":"subscribe","channel":"lines","id":"1"}') == Subscribe(
        "lines", "1"
    )
    assert parse_control('{"type":"unsubscribe","channel":"a:b","id":2}') == Unsubscribe("a:b", 2)
    assert parse_control('{"type":"ping"}') == Ping(None)
    assert parse_control('{"type":"refresh","token":"t","id":3}') == Refresh("t", 3)


@pytest.mark.parametrize(
    ("text", "request_id"),
    [
        ("not json", None),
        ("[]", None),
        ('"subscribe"', None),
        ('{"type":"subscribe","id":"x"}', "x"),
        ('{"type":"subscribe","channel":5,"id":1}', 1),
        ('{"type":"subscribe","channel":""}', None),
        ('{"type":"refresh","token":null,"id":9}', 9),
        ('{"type":"jump","id":"j"}', "j"),
        ('{"id":"no-type"}', "no-type"),
        ('{"type":"ping","id":true}', None),
    ],
)
def test_malformed_control_is_a_bad_request(text: str, request_id: object) -> None:
    with pytest.raises(ProtocolError) as err:
        parse_control(text)
    assert err.value.code == "bad_request"
    assert err.value.request_id == request_id
    reply = json.loads(err.value.reply())
    assert reply["type"] == "error" and reply["code"] == "bad_request"
    assert reply.get("id") == request_id


def test_replies() -> None:
    assert json.loads(protocol.subscribed_reply("a", 1)) == {
        "type": "subscribed",
        "channel": "a",
        "id": 1,
    }
    assert json.loads(protocol.unsubscribed_reply("a", None, reason="forbidden")) == {
        "type": "unsubscribed", "channel": "a", "reason": "forbidden"
    }  # fmt: skip
    assert json.loads(protocol.pong_reply("p")) == {"type": "pong", "id": "p"}
    assert json.loads(protocol.refreshed_reply(123, None)) == {"type": "refreshed", "exp": 123}
    assert protocol.split_channel("order_book:BTC:USD") == ("order_book", "BTC:USD")
    assert protocol.split_channel("lines") == ("lines", None)


@pytest.mark.parametrize(
    "raw",
    ["1180591620717411303424", "9007199254740992", "-9007199254740992", "1e300",
     '"' + "x" * 257 + '"', "[1]", "{}"],
)  # fmt: skip
def test_ids_that_cannot_be_echoed_exactly_are_refused(raw: str) -> None:
    with pytest.raises(ProtocolError) as err:
        parse_control(f'{{"type":"ping","id":{raw}}}')
    assert err.value.code == "bad_request" and err.value.request_id is None
    assert "'id' must be" in err.value.message


@pytest.mark.parametrize(
    "raw", ["9007199254740991", "-9007199254740991", "0", "5.5", '"' + "x" * 256 + '"', '""']
)
def test_ids_are_echoed_as_the_same_json_value(raw: str) -> None:
    control = parse_control(f'{{"type":"ping","id":{raw}}}')
    assert pong_reply(control.id) == b'{"type":"pong","id":%s}' % raw.encode()
