from __future__ import annotations

from wsrt.health import Readiness, Status
from wsrt.kafka.watch import LOOP_STALLED, STALLED, SourceHealth, Watch


def test_a_loop_that_turns_is_never_stalled() -> None:
    w = Watch(stall=30, now=0)
    for t in range(0, 100, 10):
        w.turned(t)
        assert w.verdict(t + 5) is None


def test_a_loop_that_stops_turning() -> None:
    w = Watch(stall=30, now=0)
    w.turned(10)
    assert w.verdict(39) is None
    assert w.verdict(40) == LOOP_STALLED


def test_records_waiting_without_delivery() -> None:
    w = Watch(stall=30, now=0)
    w.turned(100)
    w.observed(100, True)  # the first sight of waiting records starts the clock
    w.turned(125)
    assert w.verdict(125) is None
    w.turned(131)
    assert w.verdict(131) == STALLED


def test_delivery_restarts_the_clock_and_no_waiting_clears_it() -> None:
    w = Watch(stall=30, now=0)
    w.observed(0, True)
    w.delivered(20)
    w.turned(45)
    assert w.verdict(45) is None  # delivered 25 s ago
    w.observed(46, False)
    w.turned(100)
    assert w.verdict(100) is None


def test_an_unknown_probe_result_is_not_a_stall() -> None:
    w = Watch(stall=30, now=0)
    w.observed(0, True)
    w.observed(10, None)  # brokers unreachable: readiness says so, replacing would not help
    w.turned(50)
    assert w.verdict(50) is None


def test_a_refusal_holds_readiness_down_until_a_fetch_succeeds() -> None:
    readiness = Readiness()
    health = SourceHealth(readiness)
    health.placed(Status.OK, "")
    health.denied("Kafka does not let user x read topic(s) t")
    assert (readiness.status, readiness.reason) == (
        Status.DEGRADED, "Kafka does not let user x read topic(s) t"
    )  # fmt: skip
    health.placed(Status.OK, "")  # the next consumer is assigned again: still refused
    assert readiness.status is Status.DEGRADED
    health.allowed()  # a fetch succeeded
    assert readiness.status is Status.OK


def test_a_cluster_serving_every_partition_is_ready_and_says_what_it_lacks() -> None:
    from wsrt.kafka.options import Replication, replication_words

    health = SourceHealth(Readiness())
    health.placed(Status.OK, "")
    health.replication(*replication_words(Replication([], 2, [3])))
    assert health.readiness.ready
    assert health.readiness.reason == (
        "serving every partition; Kafka broker id 3 away, 2 partition(s) under-replicated"
    )
    health.replication(*replication_words(Replication([], 1, [])))
    assert health.readiness.ready and "catching up" in health.readiness.reason
    health.replication(*replication_words(Replication([], 0, [])))
    assert (health.readiness.status, health.readiness.reason) == (Status.OK, "")


def test_a_partition_without_leader_is_an_outage_until_one_is_elected() -> None:
    from wsrt.kafka.options import Replication, replication_words

    health = SourceHealth(Readiness())
    health.placed(Status.OK, "")
    health.replication(*replication_words(Replication(["t[0]", "t[2]"], 2, [2, 3])))
    assert health.readiness.status is Status.DEGRADED
    assert health.readiness.reason == "Kafka has no leader for t[0], t[2] (broker id 2, 3 away)"
    health.replication(*replication_words(Replication([], 2, [2, 3])))
    assert health.readiness.ready
    # An unreachable cluster still says so first; a start-up is not made ready by a note.
    health.unreachable("cannot reach Kafka at x:1: connection refused")
    assert health.readiness.reason.startswith("cannot reach")
    starting = SourceHealth(Readiness())
    starting.replication(*replication_words(Replication([], 1, [3])))
    assert starting.readiness.status is Status.STARTING


def test_a_registry_that_does_not_answer_is_an_outage_until_it_does() -> None:
    health = SourceHealth(Readiness())
    health.placed(Status.OK, "")
    health.registry("cannot reach the Schema Registry at http://r:8081: connection refused")
    assert health.readiness.status is Status.DEGRADED
    assert health.readiness.reason.startswith("cannot reach the Schema Registry")
    health.registry(None)
    assert health.readiness.ready
