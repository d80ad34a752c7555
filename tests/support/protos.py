"""The Protobuf schemas of the format tests, compiled by protoc (grpcio-tools) itself.

``wsrt/quote.proto`` imports ``wsrt/common.proto`` and Google's Timestamp,
and declares a nested message and an enum, so a reader has to resolve an
import, a well-known type and message indexes. :func:`classes` gives the
generated message classes the way an application's build would.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

COMMON = """syntax = "proto3";
package wsrt.common;
message Money { string currency = 1; int64 units = 2; }
"""
QUOTE = """syntax = "proto3";
package wsrt.test;
import "wsrt/common.proto";
import "google/protobuf/timestamp.proto";
message Other { int32 x = 1; }
message Quote {
  enum Side { BACK = 0; LAY = 1; }
  message Leg { double odds = 1; }
  string event_id = 1;
  wsrt.common.Money price = 2;
  google.protobuf.Timestamp at = 3;
  Side side = 4;
  repeated Leg legs = 5;
  bytes raw = 6;
  map<string, int32> tags = 7;
  optional string note = 8;
}
"""


def compile_files(workdir: Path, files: dict[str, str], main: str) -> list[Any]:
    """The ``FileDescriptorProto`` of ``main`` and what it imports (``files``: path →
    text; Google's well-known files from grpcio-tools), imports first."""
    from grpc_tools import protoc

    for path, text in files.items():
        (workdir / path).parent.mkdir(parents=True, exist_ok=True)
        (workdir / path).write_text(text)
    library = importlib.resources.files("grpc_tools") / "_proto"
    out = workdir / "set.pb"
    argv = ["protoc", f"-I{workdir}", f"-I{library}", f"--descriptor_set_out={out}",
            "--include_imports", main]  # fmt: skip
    if protoc.main(argv) != 0:
        raise RuntimeError(f"protoc did not compile {main}")
    return list(descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file)


def compiled(workdir: Path) -> list[Any]:
    """``wsrt/quote.proto`` and its imports, compiled."""
    files = {"wsrt/common.proto": COMMON, "wsrt/quote.proto": QUOTE}
    return compile_files(workdir, files, "wsrt/quote.proto")


def classes_of(protos: list[Any], names: list[str]) -> dict[str, Any]:
    """The message classes of ``names`` (full names), as an application's build makes them."""
    pool = descriptor_pool.DescriptorPool()
    for proto in protos:
        pool.Add(proto)
    return {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(n)) for n in names}


def classes(workdir: Path) -> dict[str, Any]:
    """Message classes by full name (``wsrt.test.Quote``, ``wsrt.test.Quote.Leg`` …)."""
    names = ["wsrt.common.Money", "wsrt.test.Other", "wsrt.test.Quote", "wsrt.test.Quote.Leg"]
    return classes_of(compiled(workdir), names)
