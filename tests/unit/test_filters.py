"""Server-side filters (wsrt/filters.py): every operator and combinator, the errors that name
the bad part, and a property test against a plain reference evaluator written here."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsrt.filters import MAX_DEPTH, FilterError, View, both, keys_filter, parse
from wsrt.wire import text_frame

ABSENT = object()


def view(
    data: Any = ABSENT,
    key: bytes | None = b"EVT-1",
    partition: int = 0,
    timestamp: int = 1000,
    headers: list[tuple[str, bytes | None]] | None = None,
) -> View:
    envelope: dict[str, Any] = {"type": "message", "channel": "t", "partition": partition}
    if data is not ABSENT:
        envelope["data"] = data
    return View(key, partition, timestamp, headers or [], text_frame(json.dumps(envelope).encode()))


RECORD = {"market": "moneyline", "odds": 2.5, "live": True, "legs": [{"n": 1}], "tag": None}


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ({"field": "data.market", "eq": "moneyline"}, True),
        ({"field": "data.market", "ne": "moneyline"}, False),
        ({"field": "data.market", "in": ["spread", "moneyline"]}, True),
        ({"field": "data.market", "nin": ["spread", "moneyline"]}, False),
        ({"field": "data.odds", "lt": 3}, True),
        ({"field": "data.odds", "lt": 2.5}, False),
        ({"field": "data.odds", "lte": 2.5}, True),
        ({"field": "data.odds", "gt": 2.5}, False),
        ({"field": "data.odds", "gte": 2}, True),
        ({"field": "data.market", "gt": "m"}, True),  # strings compare with strings
        ({"field": "data.market", "lt": 3}, False),  # and never with numbers
        ({"field": "data.odds", "eq": 2.5}, True),
        ({"field": "data.live", "eq": 1}, False),  # true is not 1
        ({"field": "data.live", "eq": True}, True),
        ({"field": "data.tag", "eq": None}, True),
        ({"field": "data.tag", "exists": True}, True),  # null is there
        ({"field": "data.missing", "exists": False}, True),
        ({"field": "data.missing", "ne": "x"}, True),  # absent satisfies only ne / nin / exists
        ({"field": "data.missing", "eq": None}, False),
        ({"field": "data.legs.0.n", "eq": 1}, True),
        ({"field": "data.legs.1.n", "exists": True}, False),
        ({"field": "data.market", "prefix": "money"}, True),
        ({"field": "data.odds", "prefix": "2"}, False),
        ({"field": "key", "eq": "EVT-1"}, True),
        ({"field": "partition", "in": [0, 1]}, True),
        ({"field": "timestamp", "gte": 1000}, True),
        ({"field": "headers.region", "in": ["eu", "uk"]}, True),
        ({"field": "headers.blob", "exists": True}, False),  # not UTF-8: not a text header
        ({"all": [{"field": "key", "eq": "EVT-1"}, {"field": "data.odds", "gt": 3}]}, False),
        ({"any": [{"field": "key", "eq": "EVT-2"}, {"field": "data.odds", "gt": 2}]}, True),
        ({"not": {"field": "key", "eq": "EVT-1"}}, False),
    ],
)
def test_each_operator_and_combinator(expression: dict[str, Any], expected: bool) -> None:
    record = view(RECORD, headers=[("region", b"fr"), ("region", b"uk"), ("blob", b"\xff")])
    assert parse(expression).test(record) is expected


def test_only_a_filter_that_reads_data_parses_the_value() -> None:
    assert not parse({"field": "key", "eq": "x"}).reads_data
    assert parse({"not": {"field": "data.a", "exists": True}}).reads_data
    broken = View(b"k", 0, 0, [], text_frame(b"{not json"))
    assert parse({"field": "key", "eq": "k"}).test(broken)
    assert not parse({"field": "data.a", "exists": True}).test(broken)


def test_equal_filters_have_equal_canonical_text_and_both_ands_them() -> None:
    a = parse(
        {
            "field": "key",
            "in": ["a", "b"],
        }
    )
    b = parse(json.loads('{"in": ["a", "b"], "field": "key"}'))
    assert a.canonical == b.canonical
    assert parse({"field": "key", "in": ["b", "a"]}).canonical != a.canonical
    claim = parse({"field": "headers.account", "eq": "acct-42"})
    mine = keys_filter(["EVT-1"])
    combined = both(claim, mine, None)
    assert combined is not None and both(None, claim) is claim and both() is None
    assert combined.test(view(headers=[("account", b"acct-42")]))
    assert not combined.test(view(headers=[("account", b"acct-7")]))
    assert not combined.test(view(key=b"EVT-2", headers=[("account", b"acct-42")]))


@pytest.mark.parametrize(
    ("expression", "said"),
    [
        ([], "filter must be an object"),
        ({}, "filter needs 'field' and an operator"),
        ({"field": "data.a"}, "filter needs exactly one operator, has 0"),
        ({"field": "data.a", "eq": 1, "ne": 2}, "filter needs exactly one operator, has 2"),
        ({"field": "data.a", "like": "x"}, "filter.like is not an operator"),
        ({"field": "body.a", "eq": 1}, "filter.field 'body.a' is not key"),
        ({"field": "data..a", "eq": 1}, "filter.field 'data..a' has an empty path segment"),
        ({"field": "headers.", "eq": 1}, "filter.field 'headers.' is not key"),
        ({"field": "key", "eq": [1]}, "filter.eq must be a string, number, boolean or null"),
        ({"field": "key", "in": []}, "filter.in must be a non-empty list"),
        ({"field": "key", "lt": None}, "filter.lt must be a number or a string"),
        ({"field": "key", "exists": 1}, "filter.exists must be true or false"),
        ({"field": "key", "prefix": 1}, "filter.prefix must be a string"),
        ({"all": []}, "filter.all must be a non-empty list of filters"),
        ({"all": [{"field": "key", "eq": 1}, {"field": "x", "eq": 1}]}, "filter.all[1].field"),
        ({"any": [{"not": {"field": "key", "lt": True}}]}, "filter.any[0].not.lt must be"),
        ({"all": [{"field": "key", "eq": 1}], "any": []}, "filter has all, any: one combinator"),
        ({"field": "key", "in": list(range(300))}, "filter.in has 300 values; at most 256"),
    ],
)
def test_a_bad_filter_is_refused_naming_the_bad_part(expression: object, said: str) -> None:
    with pytest.raises(FilterError) as refused:
        parse(expression)
    assert str(refused.value).startswith(said), str(refused.value)


def test_size_depth_and_keys_are_bounded() -> None:
    deep: dict[str, Any] = {"field": "key", "eq": "x"}
    for _ in range(MAX_DEPTH - 1):
        deep = {"not": deep}
    parse(deep)
    with pytest.raises(FilterError, match="nests deeper than 8"):
        parse({"not": deep})
    with pytest.raises(FilterError, match="bytes; at most 100"):
        parse({"field": "data.a", "eq": "x" * 100}, max_bytes=100)
    for bad in ([], [""], ["a", 1], "a"):
        with pytest.raises(FilterError, match="'keys' must be a non-empty list"):
            keys_filter(bad)
    assert keys_filter(["b", "a", "b"]).canonical == b'{"field":"key","in":["a","b"]}'


# -- the property: the server's decision equals a plain reference evaluation -------------


def reference(node: dict[str, Any], record: dict[str, Any]) -> bool:
    """What the documented language means, written out plainly (not the compiled closures)."""
    if "all" in node:
        return all(reference(n, record) for n in node["all"])
    if "any" in node:
        return any(reference(n, record) for n in node["any"])
    if "not" in node:
        return not reference(node["not"], record)
    field = node["field"]
    (op,) = [k for k in node if k != "field"]
    want = node[op]
    if field in ("key", "partition", "timestamp"):
        found = record.get(field, ABSENT)
    elif field.startswith("headers."):
        found = record["headers"].get(field[len("headers.") :], ABSENT)
    else:
        found = record.get("data", ABSENT)
        for step in field.split(".")[1:]:
            if isinstance(found, dict) and step in found:
                found = found[step]
            elif isinstance(found, list) and step.isdigit() and int(step) < len(found):
                found = found[int(step)]
            else:
                found = ABSENT
                break

    def same(a: Any, b: Any) -> bool:
        if a is ABSENT:
            return False
        if type(a) is bool or type(b) is bool:
            return type(a) is type(b) and a == b
        if type(a) in (int, float) and type(b) in (int, float):
            return a == b
        return type(a) is type(b) and a == b

    if op == "exists":
        return (found is not ABSENT) == want
    if op == "eq":
        return same(found, want)
    if op == "ne":
        return not same(found, want)
    if op == "in":
        return any(same(found, w) for w in want)
    if op == "nin":
        return not any(same(found, w) for w in want)
    if op == "prefix":
        return type(found) is str and found.startswith(want)
    number = type(found) in (int, float) and type(want) in (int, float)
    text = type(found) is str and type(want) is str
    if not (number or text):
        return False
    return {"lt": found < want, "lte": found <= want, "gt": found > want, "gte": found >= want}[op]


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from([0.0, 1.0, 2.5, -1.5]),
    st.sampled_from(["", "a", "ab", "b", "EVT-1", "1"]),
)  # fmt: skip
fields = st.sampled_from(
    ["key", "partition", "timestamp", "headers.region", "headers.gone", "data.a", "data.b.c",
     "data.list.0", "data.list.3", "data"]
)  # fmt: skip


def leaves() -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(
        st.builds(lambda f, op, v: {"field": f, op: v}, fields,
                  st.sampled_from(["eq", "ne"]), scalars),
        st.builds(lambda f, op, v: {"field": f, op: v}, fields,
                  st.sampled_from(["in", "nin"]), st.lists(scalars, min_size=1, max_size=4)),
        st.builds(lambda f, op, v: {"field": f, op: v}, fields,
                  st.sampled_from(["lt", "lte", "gt", "gte"]),
                  st.one_of(st.integers(-3, 3), st.sampled_from([0.5, "a", "b"]))),
        st.builds(lambda f, v: {"field": f, "exists": v}, fields, st.booleans()),
        st.builds(lambda f, v: {"field": f, "prefix": v}, fields, st.sampled_from(["", "a", "E"])),
    )  # fmt: skip


expressions = st.recursive(
    leaves(),
    lambda inner: st.one_of(
        st.builds(lambda xs: {"all": xs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda xs: {"any": xs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda x: {"not": x}, inner),
    ),
    max_leaves=6,
)
values = st.one_of(scalars, st.lists(scalars, max_size=4))
records = st.fixed_dictionaries(
    {
        "key": st.one_of(st.sampled_from(["EVT-1", "a", "ab", "1"])),
        "partition": st.integers(0, 3),
        "timestamp": st.integers(-2, 2),
        "headers": st.dictionaries(st.sampled_from(["region"]), st.sampled_from(["a", "eu"])),
        "data": st.one_of(
            scalars,
            st.fixed_dictionaries({}, optional={
                "a": values, "b": st.fixed_dictionaries({}, optional={"c": scalars}),
                "list": st.lists(scalars, max_size=4),
            }),
        ),
    },
    optional={},
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(expressions.filter(lambda e: len(json.dumps(e)) < 4000), records)
def test_the_server_decides_as_the_reference_does(
    expression: dict[str, Any], record: dict[str, Any]
) -> None:
    headers = [(n, v.encode()) for n, v in record["headers"].items()]
    seen = view(
        record["data"], record["key"].encode(), record["partition"], record["timestamp"], headers
    )
    assert parse(expression).test(seen) is reference(expression, record)
