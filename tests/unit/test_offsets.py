from __future__ import annotations

from wsrt.kafka.offsets import Offsets, describe, describe_partitions

A0, A1, B0 = ("a", 0), ("a", 1), ("b", 0)


def test_commit_carries_the_next_offset_of_what_the_hub_took() -> None:
    o = Offsets()
    o.positioned(A0, 10)
    o.taken(A0, 15, highwater=20)
    o.taken(A0, 18, highwater=20)
    assert o.positions[A0] == 18 and o.lag[A0] == 2
    assert o.pending
    assert o.to_commit([A0, A1]) == {A0: 18}
    assert not o.pending and o.to_commit([A0]) == {}


def test_only_assigned_partitions_are_committed() -> None:
    o = Offsets()
    o.taken(A0, 5, None)
    o.taken(B0, 7, None)
    assert o.to_commit([A0]) == {A0: 5}
    assert o.lag == {}  # no high watermark seen


def test_a_failed_commit_is_retried_unless_superseded() -> None:
    o = Offsets()
    o.taken(A0, 5, None)
    o.taken(A1, 9, None)
    failed = o.to_commit([A0, A1])
    o.taken(A1, 12, None)  # newer than what failed
    o.commit_failed(failed)
    assert o.to_commit([A0, A1]) == {A0: 5, A1: 12}


def test_revoked_partitions_are_forgotten() -> None:
    o = Offsets()
    o.taken(A0, 5, 9)
    o.taken(A1, 6, 6)
    o.forget([A0])
    assert A0 not in o.positions and A0 not in o.lag
    assert o.to_commit([A0, A1]) == {A1: 6}


def test_partitions_behind_their_high_watermark() -> None:
    o = Offsets()
    o.positioned(A0, 5)
    o.positioned(A1, 5)
    assert o.behind({A0: 9, A1: 5, B0: 100, ("c", 0): None}) == [A0]  # B0 is not ours


def test_lag_never_goes_negative() -> None:
    o = Offsets()
    o.taken(A0, 10, highwater=8)  # a stale high watermark
    assert o.lag[A0] == 0


def test_descriptions_for_logs() -> None:
    assert describe({B0: 3, A1: 2, A0: 1}) == "a[0]=1 a[1]=2 b[0]=3"
    assert describe_partitions([A1, B0, A0]) == "a[0,1] b[0]"
