"""Records/s that one core decodes to JSON text, per value format (docs/performance.md).

Run from the repository with the test environment (its serializers write the
records): ``.venv-test/bin/python scripts/decode_rate.py``. The Avro record is
the 8-field one of tests/integration/test_schema_formats.py, the Protobuf one
the Quote of tests/support/protos.py (an import, a Timestamp, a nested
message, an enum, a map), each decoded by ``schemas.Schemas.decode`` as the
server does once per record; JSON is the check a ``json`` topic costs.
"""

from __future__ import annotations

import io
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import fastavro
import google.protobuf
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.integration.test_schema_formats import QUOTE, quote
from tests.support import protos
from wsrt.schemas import Schemas, framed
from wsrt.wire import is_json

ROUNDS, COUNT = 3, 50_000


def rate(decode: Callable[[bytes], object], value: bytes) -> float:
    """Best of ``ROUNDS`` rounds of ``COUNT`` decodes, in records/s."""
    best = 0.0
    for _ in range(ROUNDS):
        started = time.process_time()
        for _ in range(COUNT):
            decode(value)
        best = max(best, COUNT / (time.process_time() - started))
    return best


def main() -> None:
    schemas = Schemas()
    schemas.add(1, "AVRO", json.dumps(QUOTE))
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(QUOTE), quote(7, note="x"))
    avro = framed(1, out.getvalue())
    with tempfile.TemporaryDirectory() as workdir:
        files = {f.name: f for f in protos.compiled(Path(workdir))}
        made = protos.classes(Path(workdir) / "classes")
    schemas.add(2, "PROTOBUF", protos.QUOTE, [("wsrt/common.proto", protos.COMMON)])
    q = made["wsrt.test.Quote"](event_id="EVT-1", side=1, raw=b"\x07\xff", note="x")
    q.price.currency, q.price.units = "EUR", 725
    q.at.FromMilliseconds(1_765_108_800_007)
    q.legs.add(odds=8.5)
    q.tags["n"] = 7
    proto = framed(2, b"\x02\x02" + q.SerializeToString())  # message indexes [1]
    as_json = schemas.decode(avro)
    assert files and orjson.loads(schemas.decode(proto))["event_id"] == "EVT-1"
    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"fastavro {fastavro.__version__}, protobuf {google.protobuf.__version__} "
          f"({google.protobuf.internal.api_implementation.Type()}); "
          f"best of {ROUNDS} rounds of {COUNT:,} on one core")  # fmt: skip
    json_rate = rate(is_json, as_json)
    print(f"{'format':<10}{'value bytes':>12}{'records/s':>12}{'time / json':>13}")
    for name, value, decode in (
        ("json", as_json, is_json),
        ("avro", avro, schemas.decode),
        ("protobuf", proto, schemas.decode),
    ):
        per_second = rate(decode, value)
        print(f"{name:<10}{len(value):>12}{per_second:>12,.0f}{json_rate / per_second:>12.1f}x")


if __name__ == "__main__":
    main()
