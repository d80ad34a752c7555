from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from wsrt.wire import (
    BYTES,
    EMPTY,
    NOT_JSON,
    NOT_TEXT,
    STRING,
    TOMBSTONE,
    Envelopes,
    Skipped,
    frame_payload,
    is_json,
    record_frame,
    text_frame,
)  # fmt: skip


def envelope(*args: object) -> bytes:
    """The payload of a record's frame."""
    return frame_payload(record_frame(*args))  # type: ignore[arg-type]


def parse_frame(data: bytes) -> Frame:
    reader = StreamReader()
    reader.feed_data(data)
    parser = Frame.parse(reader.read_exact, mask=False, max_size=None)
    try:
        next(parser)
    except StopIteration as done:
        frame: Frame = done.value
    return frame


def test_envelope_embeds_the_value_byte_for_byte() -> None:
    value = b'{"b": 1,  "a": [1.50, "\\u00e9"]}'
    payload = envelope("order_book", b"BTC-USD", 2, 1234, 1764120000000, value)
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
    null_key = envelope("t", None, 0, 0, 0, b"1")
    assert null_key is not None and json.loads(null_key)["key"] is None
    quoted = envelope("t", b'a"b', 0, 0, 0, b"1")
    assert quoted is not None and json.loads(quoted)["key"] == 'a"b'
    binary = envelope("t", b"\xff\xfe", 0, 0, 0, b"1")
    assert binary is not None
    obj = json.loads(binary)
    assert obj["key_encoding"] == "base64" and base64.b64decode(obj["key"]) == b"\xff\xfe"


@pytest.mark.parametrize("value", [None, b"", b"{", b"nope", b"\xff", b'{"a":NaN}', b"1 2"])
def test_values_that_are_not_json_are_refused(value: bytes | None) -> None:
    with pytest.raises(Skipped) as skipped:
        envelope("t", None, 0, 0, 0, value)
    expected = {None: TOMBSTONE, b"": EMPTY}.get(value, NOT_JSON)
    assert skipped.value.reason == expected


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 200_000])
def test_text_frames_parse_with_the_websockets_library(size: int) -> None:
    payload = ("é" * size).encode()[:size] if size else b""
    payload = payload.decode(errors="ignore").encode()
    frame = parse_frame(text_frame(payload))
    assert frame.opcode is Opcode.TEXT and frame.fin
    assert frame.data == payload


@pytest.mark.parametrize("size", [1, 100, 126, 65_000, 70_000])
def test_record_frames_parse_with_the_websockets_library(size: int) -> None:
    value = b'"' + b"x" * size + b'"'
    frame = parse_frame(record_frame("lines", b"k", 3, 7, 11, value))
    assert frame.opcode is Opcode.TEXT and frame.fin
    assert json.loads(frame.data)["data"] == "x" * size


def test_is_json_accepts_any_json_value() -> None:
    assert all(is_json(v) for v in (b"1", b'"s"', b"[1]", b"null", b'{"a":{}}'))
    assert not any(is_json(v) for v in (b"", b"{", b"1 2"))


# -- formats and headers (WS_TOPIC_FORMATS, WS_HEADERS) -----------------------


def payload_of(envelopes: Envelopes, value: bytes | None, headers: Any = ()) -> dict[str, Any]:
    frame, _ = envelopes.frame("t", b"k", 0, 7, 1_000, value, headers)
    parsed: dict[str, Any] = json.loads(frame_payload(frame))
    return parsed


def test_a_string_topic_sends_text_as_a_json_string_and_skips_what_is_not_utf8() -> None:
    text = Envelopes({"t": STRING}, (), ())
    assert payload_of(text, 'caf\u00e9 "quoted"\n'.encode())["data"] == 'caf\u00e9 "quoted"\n'
    assert payload_of(text, b"")["data"] == ""  # empty text is text
    assert payload_of(text, b"not json at all")["data"] == "not json at all"
    with pytest.raises(Skipped) as skipped:
        payload_of(text, b"\xff\xfe")
    assert skipped.value.reason == NOT_TEXT


def test_a_bytes_topic_sends_base64_and_says_so() -> None:
    raw = bytes(range(256))
    got = payload_of(Envelopes({"t": BYTES}, (), ()), raw)
    assert base64.b64decode(got["data"]) == raw and got["data_encoding"] == "base64"


def test_headers_named_are_forwarded_utf8_as_text_others_as_base64() -> None:
    headers = [("trace", b"abc"), ("bin", b"\xff\x00"), ("other", b"x"), ("trace", b"def")]
    named = payload_of(Envelopes({}, ("trace", "bin", "absent"), ()), b"{}", headers)
    assert named["headers"] == {"trace": "def"}  # the last of a repeated name
    assert named["headers_base64"] == {"bin": base64.b64encode(b"\xff\x00").decode()}
    every = payload_of(Envelopes({}, ("*",), ()), b"{}", [("a", b"1"), ("n", None)])
    assert every["headers"] == {"a": "1", "n": None}
    assert "headers" not in payload_of(Envelopes({}, (), ()), b"{}", headers)  # none asked


def test_without_formats_or_headers_the_envelope_is_byte_for_byte_what_it_was() -> None:
    value = b'{"b": 1,  "a": [1.50]}'
    plain = Envelopes({}, (), ())
    frame, _ = plain.frame("t", b"k", 0, 7, 1_000, value, [("h", b"v")])
    assert frame == record_frame("t", b"k", 0, 7, 1_000, value)
    assert frame_payload(frame) == (
        b'{"type":"message","channel":"t","key":"k","partition":0,"offset":7,'
        b'"timestamp":1000,"data":' + value + b"}"
    )


def test_a_snapshot_reads_partition_and_offset_back_past_any_header() -> None:
    from wsrt.state import position, snapshot_frame

    trap = [('"partition":9,"offset":9,', b'"partition":9,"offset":9,')]
    frame, _ = Envelopes({}, ("*",), ()).frame("t", b"k", 3, 42, 1_000, b"{}", trap)
    assert position(snapshot_frame(frame)) == (3, 42)
