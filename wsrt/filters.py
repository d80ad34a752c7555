"""Server-side filters on records, Sans-I/O (docs/protocol.md, "Filters").

A filter is a small JSON expression a ``subscribe`` may carry (and a token's
``filters`` claim may impose)::

    {"all": [{"field": "data.market", "eq": "moneyline"},
             {"field": "headers.region", "in": ["eu", "uk"]}]}

A leaf names one ``field`` (``key``, ``partition``, ``timestamp``,
``headers.<name>``, ``data.<dotted.path>``; a path segment that is a number
indexes an array) and one operator: ``eq``, ``ne``, ``in``, ``nin``, ``lt``,
``lte``, ``gt``, ``gte``, ``exists``, ``prefix``. ``all`` and ``any`` take a
list of filters, ``not`` one. Values compare as JSON values: ``1`` equals
``1.0`` but not ``true``; ``lt`` … ``gte`` compare numbers with numbers and
strings with strings, anything else is false. A field a record does not have
satisfies only ``ne``, ``nin`` and ``exists: false``.

:func:`parse` checks an expression (size, depth, every part; a
:class:`FilterError` names the bad part) and compiles it into a
:class:`Filter`, whose :attr:`~Filter.canonical` text is the same for two
equal expressions, so the hub evaluates each distinct filter once per
record whatever the number of subscribers. :class:`View` is one record as
filters see it; it parses the value at most once, and only when a filter
reads ``data``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import orjson

from wsrt.wire import frame_payload

#: Default bound on a filter's JSON text (``WS_FILTER_MAX_BYTES``).
MAX_BYTES = 4096
#: Deepest nesting of ``all`` / ``any`` / ``not``.
MAX_DEPTH = 8
#: Most entries in an ``in`` / ``nin`` list or an ``all`` / ``any``.
MAX_ITEMS = 256
#: Most keys in a ``keys`` list (it is an ``in`` list).
MAX_KEYS = MAX_ITEMS

OPERATORS = ("eq", "ne", "in", "nin", "lt", "lte", "gt", "gte", "exists", "prefix")
COMBINATORS = ("all", "any", "not")

_MISSING = object()


class FilterError(ValueError):
    """A filter that cannot be used; the message names the bad part (``filter.all[1].eq``)."""


class View:
    """One record as filters see it. ``frame`` is the record's text frame; its envelope is
    parsed (once) only when a filter reads ``data``."""

    __slots__ = ("_data", "frame", "headers", "key", "partition", "timestamp")

    def __init__(
        self,
        key: bytes | None,
        partition: int,
        timestamp: int,
        headers: Sequence[tuple[str, bytes | None]],
        frame: bytes,
    ) -> None:
        self.key = key
        self.partition = partition
        self.timestamp = timestamp
        self.headers = headers
        self.frame = frame
        self._data: Any = _MISSING

    @classmethod
    def of_envelope(
        cls, key: bytes | None, frame: bytes, headers: Sequence[tuple[str, bytes | None]]
    ) -> View:
        """A record kept as its ``message`` frame and headers (a state topic's snapshot):
        the partition and timestamp are the envelope's."""
        try:
            envelope = orjson.loads(frame_payload(frame))
        except orjson.JSONDecodeError:
            envelope = {}
        view = cls(key, envelope.get("partition", -1), envelope.get("timestamp", 0), headers, frame)
        view._data = envelope.get("data", _MISSING)
        return view

    @property
    def data(self) -> Any:
        if self._data is _MISSING:
            try:
                envelope = orjson.loads(frame_payload(self.frame))
                self._data = envelope.get("data", _MISSING)
            except orjson.JSONDecodeError:
                self._data = None
        return self._data

    def header(self, name: str) -> Any:
        """The last value of header ``name`` as text (its bytes not UTF-8: base64 is not
        guessed; the header is missing)."""
        for found, value in reversed(self.headers):
            if found == name:
                if value is None:
                    return None
                try:
                    return value.decode()
                except UnicodeDecodeError:
                    return _MISSING
        return _MISSING


Getter = Callable[[View], Any]
Test = Callable[[View], bool]


class Filter:
    """A checked, compiled filter: :meth:`test` decides one record."""

    __slots__ = ("canonical", "reads_data", "test")

    def __init__(self, test: Test, canonical: bytes, reads_data: bool) -> None:
        self.test = test
        #: The expression's JSON with sorted keys: equal filters, equal text.
        self.canonical = canonical
        self.reads_data = reads_data

    def __repr__(self) -> str:
        return f"Filter({self.canonical.decode()})"


def parse(expression: object, max_bytes: int = MAX_BYTES, where: str = "filter") -> Filter:
    """Check and compile ``expression`` (already parsed JSON); :class:`FilterError` if bad."""
    canonical = orjson.dumps(expression, option=orjson.OPT_SORT_KEYS)
    if len(canonical) > max_bytes:
        raise FilterError(f"{where} is {len(canonical)} bytes; at most {max_bytes}")
    reads: list[str] = []
    test = _compile(expression, where, 1, reads)
    return Filter(test, canonical, "data" in reads)


def keys_filter(keys: object) -> Filter:
    """``"keys": [...]`` as the filter it stands for (``key`` in the list)."""
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) and k for k in keys):
        raise FilterError("'keys' must be a non-empty list of non-empty strings")
    if len(keys) > MAX_KEYS:
        raise FilterError(f"'keys' names {len(keys)} keys; at most {MAX_KEYS}")
    return parse({"field": "key", "in": sorted(set(keys))}, max_bytes=1 << 20, where="keys")


def both(*filters: Filter | None) -> Filter | None:
    """Every one of ``filters`` (``None``: no filter), as one filter."""
    given = [f for f in filters if f is not None]
    if len(given) <= 1:
        return given[0] if given else None
    tests = [f.test for f in given]
    canonical = b'{"all":[' + b",".join(f.canonical for f in given) + b"]}"
    return Filter(
        lambda view: all(t(view) for t in tests), canonical, any(f.reads_data for f in given)
    )


def _compile(node: object, where: str, depth: int, reads: list[str]) -> Test:
    if depth > MAX_DEPTH:
        raise FilterError(f"{where} nests deeper than {MAX_DEPTH}")
    if not isinstance(node, dict):
        raise FilterError(f"{where} must be an object")
    combinators = [name for name in COMBINATORS if name in node]
    if combinators:
        if len(node) != 1:
            raise FilterError(f"{where} has {', '.join(sorted(node))}: one combinator alone")
        name = combinators[0]
        return _combine(name, node[name], f"{where}.{name}", depth, reads)
    if "field" not in node:
        raise FilterError(f"{where} needs 'field' and an operator, or all / any / not")
    operators = [name for name in node if name != "field"]
    unknown = [name for name in operators if name not in OPERATORS]
    if unknown:
        raise FilterError(f"{where}.{unknown[0][:40]} is not an operator ({', '.join(OPERATORS)})")
    if len(operators) != 1:
        raise FilterError(f"{where} needs exactly one operator, has {len(operators)}")
    op = operators[0]
    get = _getter(node["field"], f"{where}.field", reads)
    return _leaf(op, get, node[op], f"{where}.{op}")


def _combine(name: str, value: object, where: str, depth: int, reads: list[str]) -> Test:
    if name == "not":
        inner = _compile(value, where, depth + 1, reads)
        return lambda view: not inner(view)
    if not isinstance(value, list) or not value:
        raise FilterError(f"{where} must be a non-empty list of filters")
    if len(value) > MAX_ITEMS:
        raise FilterError(f"{where} has {len(value)} filters; at most {MAX_ITEMS}")
    tests = [_compile(v, f"{where}[{i}]", depth + 1, reads) for i, v in enumerate(value)]
    if name == "all":
        return lambda view: all(t(view) for t in tests)
    return lambda view: any(t(view) for t in tests)


def _getter(field: object, where: str, reads: list[str]) -> Getter:
    if not isinstance(field, str) or not field:
        raise FilterError(f"{where} must be a field name")
    if field == "key":
        reads.append("key")
        return _key
    if field == "partition":
        reads.append("partition")
        return lambda view: view.partition
    if field == "timestamp":
        reads.append("timestamp")
        return lambda view: view.timestamp
    head, dot, rest = field.partition(".")
    if head == "headers" and dot and rest:
        reads.append("headers")
        return lambda view: view.header(rest)
    if head == "data":
        reads.append("data")
        if not dot:
            return lambda view: view.data
        path = rest.split(".")
        if not all(path):
            raise FilterError(f"{where} {field[:80]!r} has an empty path segment")
        steps = [int(s) if s.isdigit() else s for s in path]
        return lambda view: _walk(view.data, steps)
    raise FilterError(
        f"{where} {field[:80]!r} is not key, partition, timestamp, headers.<name> or data.<path>"
    )


def _key(view: View) -> Any:
    key = view.key
    if key is None:
        return _MISSING
    try:
        return key.decode()
    except UnicodeDecodeError:
        return _MISSING


def _walk(value: Any, steps: Sequence[str | int]) -> Any:
    for step in steps:
        if isinstance(value, dict):
            value = value.get(str(step), _MISSING)
        elif isinstance(value, list) and isinstance(step, int):
            value = value[step] if step < len(value) else _MISSING
        else:
            return _MISSING
        if value is _MISSING:
            return _MISSING
    return value


def _scalar(value: object) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _same(a: Any, b: Any) -> bool:
    """JSON equality: numbers by value, but a boolean is not a number."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return bool(a == b)
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _leaf(op: str, get: Getter, value: object, where: str) -> Test:
    if op == "exists":
        if not isinstance(value, bool):
            raise FilterError(f"{where} must be true or false")
        return lambda view: (get(view) is not _MISSING) is value
    if op in ("eq", "ne"):
        if not _scalar(value):
            raise FilterError(f"{where} must be a string, number, boolean or null")
        if op == "eq":
            return lambda view: _same(get(view), value)
        return lambda view: not _same(get(view), value)
    if op in ("in", "nin"):
        return _membership(op, get, value, where)
    if op == "prefix":
        if not isinstance(value, str):
            raise FilterError(f"{where} must be a string")
        return lambda view: _prefixed(get(view), value)
    return _order(op, get, value, where)


def _prefixed(found: Any, prefix: str) -> bool:
    return isinstance(found, str) and found.startswith(prefix)


def _membership(op: str, get: Getter, value: object, where: str) -> Test:
    if not isinstance(value, list) or not value or not all(_scalar(v) for v in value):
        raise FilterError(f"{where} must be a non-empty list of strings, numbers, booleans or null")
    if len(value) > MAX_ITEMS:
        raise FilterError(f"{where} has {len(value)} values; at most {MAX_ITEMS}")
    strings = frozenset(v for v in value if isinstance(v, str))
    others = [v for v in value if not isinstance(v, str)]

    def member(found: Any) -> bool:
        if isinstance(found, str):
            return found in strings
        return any(_same(found, v) for v in others)

    if op == "in":
        return lambda view: member(get(view))
    return lambda view: not member(get(view))


_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "lt": lambda a, b: a < b, "lte": lambda a, b: a <= b,
    "gt": lambda a, b: a > b, "gte": lambda a, b: a >= b,
}  # fmt: skip


def _order(op: str, get: Getter, value: object, where: str) -> Test:
    compare = _ORDER[op]
    if _number(value):

        def numbers(view: View) -> bool:
            found = get(view)
            return _number(found) and compare(found, value)

        return numbers
    if isinstance(value, str):

        def strings(view: View) -> bool:
            found = get(view)
            return isinstance(found, str) and compare(found, value)

        return strings
    raise FilterError(f"{where} must be a number or a string")
