from __future__ import annotations

import base64
import json

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from wsrt import protocol
from wsrt.protocol import Ping, ProtocolError, Refresh, Subscribe, Unsubscribe, parse_control


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


def test_envelope_embeds_the_value_byte_for_byte() -> None:
    value = b'{"b": 1,  "a": [1.50, "\\u00e9"]}'
    payload = protocol.encode_envelope("order_book", b"BTC-USD", 2, 1234, 1764120000000, value)
    assert payload is not None
    assert value in payload
    assert json.loads(payload) == {
        "type": "message", "channel": "order_book", "key": "BTC-USD", "partition": 2,
        "offset": 1234, "timestamp": 1764120000000, "data": {"b": 1, "a": [1.5, "é"]},
    }  # fmt: skip
    assert list(json.loads(payload)) == [
        "type",
        "channel",
        "key",
        "partition",
        "offset",
        "timestamp",
        "data",
    ]


def test_envelope_keys() -> None:
    null_key = protocol.encode_envelope("t", None, 0, 0, 0, b"1")
    assert null_key is not None and json.loads(null_key)["key"] is None
    quoted = protocol.encode_envelope("t", b'a"b', 0, 0, 0, b"1")
    assert quoted is not None and json.loads(quoted)["key"] == 'a"b'
    binary = protocol.encode_envelope("t", b"\xff\xfe", 0, 0, 0, b"1")
    assert binary is not None
    obj = json.loads(binary)
    assert obj["key_encoding"] == "base64" and base64.b64decode(obj["key"]) == b"\xff\xfe"


@pytest.mark.parametrize("value", [None, b"", b"{", b"nope", b"\xff", b'{"a":NaN}', b"1 2"])
def test_values_that_are_not_json_are_refused(value: bytes | None) -> None:
    assert protocol.encode_envelope("t", None, 0, 0, 0, value) is None


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 200_000])
def test_text_frames_parse_with_the_websockets_library(size: int) -> None:
    payload = ("é" * size).encode()[:size] if size else b""
    payload = payload.decode(errors="ignore").encode()
    reader = StreamReader()
    reader.feed_data(protocol.text_frame(payload))
    parser = Frame.parse(reader.read_exact, mask=False, max_size=None)
    try:
        next(parser)
    except StopIteration as done:
        frame = done.value
    assert frame.opcode is Opcode.TEXT and frame.fin
    assert frame.data == payload


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
