from __future__ import annotations

import json
import time

from hypothesis import given
from hypothesis import strategies as st

from wsrt.auth import Claims, Verifier, mint_token
from wsrt.session import ERROR_WINDOW_SECONDS, Session

SECRET = "unit-test-secret-0123456789abcdef0123"
TOPICS = frozenset({"lines", "order_book"})


def session(channels=None, *, rate: int = 100, max_errors: int = 5, max_subs: int = 3) -> Session:
    return Session(
        Claims("alice", None, channels),
        topics=TOPICS,
        verifier=Verifier(SECRET),
        max_subscriptions=max_subs,
        control_rate=rate,
        max_errors=max_errors,
        now=0.0,
    )


def names(channels) -> list[str]:
    return [c.name for c in channels]


def replies(effects) -> list[dict]:
    return [json.loads(r) for r in effects.replies]


def send(s: Session, obj: dict | str, now: float = 1.0):
    return s.handle(obj if isinstance(obj, str) else json.dumps(obj), now)


def test_subscribe_unsubscribe_ping() -> None:
    s = session()
    e = send(s, {"type": "subscribe", "channel": "lines", "id": "1"})
    assert names(e.subscribe) == ["lines"] and replies(e) == [
        {"type": "subscribed", "channel": "lines", "id": "1"}
    ]
    e = send(s, {"type": "subscribe", "channel": "lines", "id": "2"})
    assert names(e.subscribe) == [] and replies(e)[0]["type"] == "subscribed"  # idempotent
    e = send(s, {"type": "unsubscribe", "channel": "lines", "id": 3})
    assert names(e.unsubscribe) == ["lines"] and replies(e) == [
        {"type": "unsubscribed", "channel": "lines", "id": 3}
    ]
    assert replies(send(s, {"type": "ping", "id": 4})) == [{"type": "pong", "id": 4}]
    assert s.subscriptions == set()


def test_forbidden_comes_before_unknown() -> None:
    s = session(("lines",))
    assert (
        replies(send(s, {"type": "subscribe", "channel": "secret-topic"}))[0]["code"] == "forbidden"
    )
    assert (
        replies(send(s, {"type": "subscribe", "channel": "order_book"}))[0]["code"] == "forbidden"
    )
    assert (
        replies(send(session(), {"type": "subscribe", "channel": "nope"}))[0]["code"]
        == "unknown_channel"
    )


def test_empty_key_is_unknown() -> None:
    assert (
        replies(send(session(), {"type": "subscribe", "channel": "lines:"}))[0]["code"]
        == "unknown_channel"
    )


def test_subscription_limit() -> None:
    s = session(max_subs=2)
    for channel in ("lines", "lines:a"):
        assert names(send(s, {"type": "subscribe", "channel": channel}).subscribe) == [channel]
    e = send(s, {"type": "subscribe", "channel": "lines:b", "id": 9})
    assert names(e.subscribe) == [] and replies(e)[0] == {
        "type": "error", "code": "too_many_subscriptions", "message": "at most 2 subscriptions per connection",
        "channel": "lines:b", "id": 9,
    }  # fmt: skip


def test_rate_limit_then_close() -> None:
    s = session(rate=2, max_errors=3)
    codes = []
    for _ in range(8):
        e = send(s, {"type": "ping"}, now=5.0)
        codes.append(replies(e)[0].get("code", "pong"))
        if e.close:
            break
    assert codes == ["pong", "pong", "rate_limited", "rate_limited", "rate_limited", "rate_limited"]
    assert e.close == (1008, "rate limit exceeded")


def test_rate_recovers_over_time() -> None:
    s = session(rate=1)
    assert replies(send(s, {"type": "ping"}, now=10.0))[0]["type"] == "pong"
    assert replies(send(s, {"type": "ping"}, now=10.1))[0]["code"] == "rate_limited"
    assert replies(send(s, {"type": "ping"}, now=11.2))[0]["type"] == "pong"


def test_errors_outside_the_window_are_forgiven() -> None:
    s = session(max_errors=2)
    for n in range(6):
        e = send(s, "bad", now=n * ERROR_WINDOW_SECONDS)
        assert e.close is None
    e1 = send(s, "bad", now=100.0)
    e2 = send(s, "bad", now=100.1)
    e3 = send(s, "bad", now=100.2)
    assert (e1.close, e2.close) == (None, None)
    assert e3.close == (1008, "too many invalid messages")


def test_refresh_replaces_grants_and_expiry() -> None:
    s = session()
    send(s, {"type": "subscribe", "channel": "lines"})
    send(s, {"type": "subscribe", "channel": "order_book:BTC"})
    now = int(time.time())
    token = mint_token(SECRET, "alice", channels=["order_book"], ttl=600, now=now)
    e = send(s, {"type": "refresh", "token": token, "id": "r"})
    assert e.refreshed and names(e.unsubscribe) == ["lines"]
    assert replies(e) == [
        {"type": "unsubscribed", "channel": "lines", "reason": "forbidden"},
        {"type": "refreshed", "exp": now + 600, "id": "r"},
    ]
    assert s.claims.expires_at == now + 600 and s.subscriptions == {"order_book:BTC"}


def test_refresh_for_another_subject_changes_nothing() -> None:
    s = session()
    before = s.claims
    e = send(s, {"type": "refresh", "token": mint_token(SECRET, "mallory"), "id": 1})
    assert not e.refreshed and s.claims is before
    assert replies(e)[0]["code"] == "unauthorized"
    e = send(s, {"type": "refresh", "token": "junk"})
    assert replies(e)[0]["code"] == "unauthorized"


def test_subscribe_at_connect_answers_each_channel() -> None:
    e = session(("lines",)).subscribe_at_connect(["lines", "order_book"], now=0.0)
    assert names(e.subscribe) == ["lines"]
    assert [(r["type"], r.get("code"), r["channel"]) for r in replies(e)] == [
        ("subscribed", None, "lines"), ("error", "forbidden", "order_book"),
    ]  # fmt: skip


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
    max_leaves=8,
)


@given(st.text() | json_values.map(lambda v: json.dumps(v, allow_nan=True)))
def test_any_frame_gets_exactly_one_answer(frame: str) -> None:
    s = session(rate=1000, max_errors=1000)
    e = s.handle(frame, 1.0)
    answers = replies(e)
    assert len(answers) >= 1
    assert answers[-1]["type"] in {"error", "subscribed", "unsubscribed", "pong", "refreshed"}
    for a in answers:
        if a["type"] == "error":
            assert a["code"] in {"bad_request", "unknown_channel", "forbidden", "unauthorized",
                                 "too_many_subscriptions", "rate_limited"}  # fmt: skip
            assert isinstance(a["message"], str) and a["message"]


def test_a_rate_limited_message_gets_its_id_echoed() -> None:
    s = session(rate=1)
    assert replies(send(s, {"type": "ping", "id": "a"}, now=0.5))[0] == {"type": "pong", "id": "a"}
    limited = replies(send(s, {"type": "subscribe", "channel": "lines", "id": 7}, now=0.5))
    assert limited[0]["code"] == "rate_limited" and limited[0]["id"] == 7
    no_id = replies(send(s, "not json", now=0.5))
    assert no_id[0]["code"] == "rate_limited" and "id" not in no_id[0]
