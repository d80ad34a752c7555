from __future__ import annotations

import pytest

from wsrt.hub import Hub
from wsrt.outlet import SLOW_CONSUMER, WRITE_FAILED, Outlet, Record
from wsrt.wire import text_frame


class MemoryOutlet(Outlet):
    """An outlet whose transport is a list of writes."""

    def __init__(self, limit: int = 10) -> None:
        self.writes: list[bytes] = []
        super().__init__(self.writes.append, limit)

    @property
    def overflowed(self) -> int:
        return int(self.verdict == SLOW_CONSUMER)

    @property
    def received(self) -> bytes:
        return b"".join(self.writes)


def rec(topic: str, key: str | None, n: int, partition: int = 0) -> Record:
    """Record number ``n`` (also its offset) of ``partition``."""
    frame = f"<{topic}:{key}:{n}>".encode()
    return Record(topic, key.encode() if key else None, frame, partition, n)


@pytest.fixture
def hub() -> Hub:
    return Hub(["lines", "order_book"])


def test_whole_topic_subscriber_gets_the_batch_in_one_write(hub: Hub) -> None:
    a = MemoryOutlet()
    hub.subscribe(a, "lines")
    hub.publish([rec("lines", None, 1), rec("order_book", None, 2), rec("lines", "k", 3)])
    assert a.writes == [b"<lines:None:1><lines:k:3>"]
    assert a.frames_sent == 2


def test_one_write_per_client_across_topics(hub: Hub) -> None:
    a = MemoryOutlet()
    hub.subscribe(a, "lines")
    hub.subscribe(a, "order_book", "BTC")
    hub.publish([rec("lines", None, 1), rec("order_book", "BTC", 2), rec("order_book", "ETH", 3)])
    assert a.writes == [b"<lines:None:1><order_book:BTC:2>"]


def test_key_subscriptions_filter_and_keep_partition_order(hub: Hub) -> None:
    a = MemoryOutlet()
    hub.subscribe(a, "order_book", "BTC")
    hub.subscribe(a, "order_book", "ETH")
    batch = [rec("order_book", k, n) for n, k in enumerate(["BTC", "ETH", "SOL", "BTC", None])]
    hub.publish(batch)
    assert a.received == b"<order_book:BTC:0><order_book:ETH:1><order_book:BTC:3>"


def test_topic_and_key_subscription_delivers_once(hub: Hub) -> None:
    a = MemoryOutlet()
    hub.subscribe(a, "order_book")
    hub.subscribe(a, "order_book", "BTC")
    hub.publish([rec("order_book", "BTC", 1), rec("order_book", "ETH", 2)])
    assert a.received == b"<order_book:BTC:1><order_book:ETH:2>"
    hub.unsubscribe(a, "order_book")
    hub.publish([rec("order_book", "BTC", 3), rec("order_book", "ETH", 4)])
    assert a.received.endswith(b"<order_book:ETH:2><order_book:BTC:3>")


def test_subscriptions_are_idempotent_and_removable(hub: Hub) -> None:
    a, b = MemoryOutlet(), MemoryOutlet()
    hub.subscribe(a, "lines")
    hub.subscribe(a, "lines")
    hub.subscribe(b, "lines", "k")
    assert hub.subscription_count("lines") == 2
    hub.unsubscribe(a, "lines", "never")
    hub.remove(a)
    assert hub.subscription_count("lines") == 1
    hub.publish([rec("lines", "k", 1)])
    assert a.writes == [] and b.received == b"<lines:k:1>"
    hub.remove(b)
    assert hub.outlet_count == 0


def test_unknown_topic_is_refused(hub: Hub) -> None:
    with pytest.raises(KeyError):
        hub.subscribe(MemoryOutlet(), "nope")


def test_paused_outlet_queues_then_flushes_on_resume(hub: Hub) -> None:
    a = MemoryOutlet(limit=5)
    hub.subscribe(a, "lines")
    a.pause()
    hub.publish([rec("lines", None, 1), rec("lines", None, 2)])
    hub.publish([rec("lines", None, 3)])
    assert a.writes == [] and a.queued == 3
    a.resume()
    assert a.writes == [b"<lines:None:1><lines:None:2><lines:None:3>"]
    assert a.queued == 0 and a.overflowed == 0


def test_overflow_drops_the_slow_outlet_only(hub: Hub) -> None:
    slow, fast = MemoryOutlet(limit=3), MemoryOutlet(limit=3)
    hub.subscribe(slow, "lines")
    hub.subscribe(fast, "lines")
    slow.pause()
    assert hub.publish([rec("lines", None, n) for n in range(3)]) == []
    assert slow.overflowed == 0
    assert hub.publish([rec("lines", None, 3)]) == [slow]
    assert slow.overflowed == 1 and slow.closed and slow.outbox == []
    assert hub.publish([rec("lines", None, 4)]) == []  # reported once
    slow.resume()
    assert slow.writes == []
    assert fast.received == b"".join(f"<lines:None:{n}>".encode() for n in range(5))


def test_control_frames_wait_behind_pending_data(hub: Hub) -> None:
    a = MemoryOutlet()
    hub.subscribe(a, "lines")
    a.pause()
    hub.publish([rec("lines", None, 1)])
    a.send(b"<ack>")
    a.resume()
    assert a.received == b"<lines:None:1><ack>"


def test_subscriber_added_after_publish_sees_only_later_messages(hub: Hub) -> None:
    a = MemoryOutlet()
    hub.publish([rec("lines", None, 1)])
    hub.subscribe(a, "lines")
    hub.publish([rec("lines", None, 2)])
    assert a.received == b"<lines:None:2>"


def failing_write(data: bytes) -> None:
    raise ConnectionResetError("peer gone")


@pytest.mark.parametrize("keyed", [False, True])
def test_a_failing_write_finishes_that_outlet_only(hub: Hub, keyed: bool) -> None:
    broken, fine = Outlet(failing_write, limit=10), MemoryOutlet()
    for outlet in (broken, fine):
        hub.subscribe(outlet, "lines", "k" if keyed else None)
    batch = [rec("lines", "k", 1), rec("order_book", "k", 2)]
    assert hub.publish(batch) == [broken]  # no exception reaches the caller
    assert broken.verdict == WRITE_FAILED and isinstance(broken.error, ConnectionResetError)
    assert broken.delivery.write_errors == 1
    assert fine.received == b"<lines:k:1>"
    assert hub.publish([rec("lines", "k", 3)]) == []
    assert fine.received == b"<lines:k:1><lines:k:3>"


def test_overflow_verdict_in_a_mixed_batch(hub: Hub) -> None:
    slow = MemoryOutlet(limit=1)
    hub.subscribe(slow, "lines")
    hub.subscribe(slow, "order_book", "k")
    slow.pause()
    finished = hub.publish([rec("lines", None, 1), rec("order_book", "k", 2)])
    assert finished == [slow] and slow.verdict == SLOW_CONSUMER


def test_send_and_resume_report_a_failed_write() -> None:
    outlet = Outlet(failing_write, limit=10)
    assert outlet.send(b"<ack>") is False and outlet.verdict == WRITE_FAILED
    paused = Outlet(failing_write, limit=10)
    paused.pause()
    assert paused.send(b"<ack>") is True  # waits: nothing written yet
    assert paused.resume() is False and paused.closed


def test_a_failing_write_on_the_single_topic_fast_path(hub: Hub) -> None:
    broken, fine = Outlet(failing_write, limit=10), MemoryOutlet()
    hub.subscribe(broken, "lines")
    hub.subscribe(fine, "lines")
    assert hub.publish([rec("lines", None, 1), rec("lines", None, 2)]) == [broken]
    assert broken.verdict == WRITE_FAILED and fine.writes == [b"<lines:None:1><lines:None:2>"]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_max_rate_sends_a_key_at_most_rate_a_second_newest_value_winning(hub: Hub) -> None:
    clock = Clock()
    hub.clock = clock
    capped, plain = MemoryOutlet(), MemoryOutlet()
    hub.subscribe(capped, "lines", rate=2)  # one message per key per 0.5 s
    hub.subscribe(plain, "lines")
    hub.publish([rec("lines", "a", 1), rec("lines", "b", 2), rec("lines", "a", 3)])
    assert capped.received == b"<lines:a:1><lines:b:2>" and hub.waiting
    clock.now += 0.2
    hub.publish([rec("lines", "a", 4), rec("lines", None, 5), rec("lines", None, 6)])
    assert capped.received.endswith(b"<lines:b:2><lines:None:5><lines:None:6>")  # no key: each
    assert hub.next_release() == pytest.approx(100.5)
    assert hub.release(100.4) == [] and capped.received.count(b"<") == 4  # not yet
    assert hub.release(100.5) == []
    assert capped.writes[-1] == (
        text_frame(b'{"type":"conflated","channel":"lines","dropped":1}') + b"<lines:a:4>"
    )  # 3 was replaced by 4, which went once a's half second was over
    assert not hub.waiting and hub.next_release() is None
    assert capped.delivery.not_delivered[("lines", "max_rate")] == 1
    clock.now = 100.6
    hub.publish([rec("lines", "b", 7), rec("lines", "a", 8)])  # b free again, a not
    assert capped.received.endswith(b"<lines:b:7>")
    assert plain.received.count(b"<") == 8  # the plain subscriber got everything
    hub.unsubscribe(capped, "lines")
    assert hub.subscription_count("lines") == 1 and hub.release(200.0) == []


def test_max_rate_with_a_filter_and_a_key_channel(hub: Hub) -> None:
    from wsrt.filters import parse

    clock = Clock()
    hub.clock = clock
    outlet = MemoryOutlet()
    only = parse({"field": "partition", "eq": 1})
    hub.subscribe(outlet, "lines", "a", match=only, rate=1)
    hub.publish([rec("lines", "a", 1, 0), rec("lines", "a", 2, 1), rec("lines", "b", 3, 1)])
    assert outlet.received == b"<lines:a:2>"
    clock.now += 0.5
    hub.publish([rec("lines", "a", 4, 1), rec("lines", "a", 5, 1)])
    hub.release(101.0)
    assert outlet.writes[-1].endswith(b'"channel":"lines:a","dropped":1}<lines:a:5>')


def test_a_filtered_subscription_keeps_its_topics_policy_and_notices() -> None:
    """A paused client of a conflate topic, filtered: the newest passing value per key, a
    conflated notice on its channel; the gap notice of the topic reaches it too; equal
    filters share a route, and unsubscribing one subscriber leaves the other's."""
    from wsrt.filters import parse

    hub = Hub(["book"], {"book": "conflate"})
    odd = parse({"field": "partition", "eq": 1})
    slow, quick, twin = MemoryOutlet(), MemoryOutlet(), MemoryOutlet()
    for outlet in (slow, quick, twin):
        hub.subscribe(outlet, "book", match=parse({"field": "partition", "eq": 1}))
    slow.pause()
    hub.publish([rec("book", "a", n, partition=n % 2) for n in range(1, 8)])
    assert quick.received == b"<book:a:1><book:a:3><book:a:5><book:a:7>"
    assert slow.received == b"" and slow.resume()
    assert slow.received == (
        text_frame(b'{"type":"conflated","channel":"book","dropped":3}') + b"<book:a:7>"
    )
    finished = hub.tell("book", 1, lambda channel, floor: text_frame(b"gap:" + channel.encode()))
    assert finished == [] and quick.writes[-1] == text_frame(b"gap:book")
    hub.unsubscribe(quick, "book")
    hub.publish([rec("book", "b", 9, partition=1)])
    assert twin.received.endswith(b"<book:b:9>") and not quick.received.endswith(b"<book:b:9>")
    assert hub.subscription_count("book") == 2 and odd.canonical == b'{"eq":1,"field":"partition"}'
