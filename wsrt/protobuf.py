"""Protobuf values of a Schema Registry, decoded to JSON once per record, Sans-I/O.

After Confluent's 5-byte header a Protobuf payload starts with its message
indexes: which message of the schema's file it is (``[1]``: the second
top-level message, ``[1, 0]``: its first nested one), as a zigzag varint
count and the indexes; a single 0 byte means ``[0]``. A registry hands the
schema back either as ``.proto`` text (what Java producers register) or as
a base64 ``FileDescriptorProto`` (what confluent-kafka's Python serializer
registers); both are read. Text is compiled with protoc from
``grpcio-tools`` in a child process, so its errors are words, not a crash.
Imports come from the schema's references; ``google/protobuf/*`` (and
``google/type/*`` where ``googleapis-common-protos`` is installed) from the
library. JSON mapping: the canonical proto3 mapping with the schema's field
names (docs/design.md, "Record formats").
"""

from __future__ import annotations

import base64
import binascii
import importlib
import importlib.resources
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import DecodeError, Message

#: Well-known files a schema may import without a reference (the serializers skip them).
_LIBRARY = (
    "any", "api", "descriptor", "duration", "empty", "field_mask", "source_context",
    "struct", "timestamp", "type", "wrappers",
)  # fmt: skip
_GOOGLE_TYPE = (
    "calendar_period", "color", "date", "datetime", "dayofweek", "expr", "fraction",
    "latlng", "money", "month", "postal_address", "quaternion", "timeofday",
)  # fmt: skip
#: How long protoc may take for one schema (it runs once per schema id).
COMPILE_SECONDS = 60.0


def indexes(payload: bytes) -> tuple[tuple[int, ...], int]:
    """The message indexes at the start of ``payload``, and where the message starts."""
    count, at = _zigzag(payload, 0)
    if count == 0:
        return (0,), at
    if not 0 < count <= 64:
        raise ValueError(f"{count} message indexes")
    found = []
    for _ in range(count):
        index, at = _zigzag(payload, at)
        found.append(index)
    return tuple(found), at


def index_bytes(path: Sequence[int]) -> bytes:
    """``path`` as message indexes (``[0]``: the single 0 byte)."""
    if list(path) == [0]:
        return b"\0"
    return b"".join(_varint(n << 1) for n in (len(path), *path))  # zigzag of n >= 0


def _zigzag(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise ValueError("the message indexes end early")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return (value >> 1) ^ -(value & 1), at


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def files(schema: str, references: Sequence[tuple[str, str]]) -> list[Any]:
    """The ``FileDescriptorProto`` of ``schema`` last, after those it imports (``references``:
    (import name, schema text) pairs, those they import first)."""
    named = [(name, _descriptor(text)) for name, text in references]
    own = _descriptor(schema)
    if own is None or any(d is None for _, d in named):  # .proto text: protoc reads them all
        return _compile(schema, references)
    out = []
    for name, descriptor in named:
        descriptor.name = name  # imported by this name, whatever the file called itself
        out.append(descriptor)
    return [*out, own]


def _descriptor(text: str) -> Any:
    """A base64 ``FileDescriptorProto``, or ``None`` when ``text`` is not one (.proto text)."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
        return descriptor_pb2.FileDescriptorProto.FromString(raw)
    except (binascii.Error, DecodeError):
        return None


def _compile(schema: str, references: Sequence[tuple[str, str]]) -> list[Any]:
    with tempfile.TemporaryDirectory(prefix="wsrt-proto-") as workdir:
        root = Path(workdir)
        (root / "src").mkdir()
        for name, text in references:
            path = root / "src" / name
            if not path.resolve().is_relative_to(root / "src"):
                raise ValueError(f"import {name!r} leaves the schema's directory")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        (root / "src" / "wsrt-schema.proto").write_text(schema)
        library = importlib.resources.files("grpc_tools") / "_proto"
        result = subprocess.run(
            [sys.executable, "-m", "grpc_tools.protoc", f"-I{root / 'src'}", f"-I{library}",
             f"--descriptor_set_out={root / 'set.pb'}", "--include_imports", "wsrt-schema.proto"],
            capture_output=True, text=True, timeout=COMPILE_SECONDS,
        )  # fmt: skip
        if result.returncode != 0:
            raise ValueError(f"protoc: {result.stderr.strip()[:500]}")
        found = descriptor_pb2.FileDescriptorSet.FromString((root / "set.pb").read_bytes())
    return list(found.file)


def pool_of(protos: Sequence[Any]) -> Any:
    """A descriptor pool holding ``protos`` and the library files they import."""
    pool = descriptor_pool.DescriptorPool()
    by_name = {p.name: p for p in protos}
    added: set[str] = set()

    def add(name: str, depth: int = 0) -> None:
        if name in added:
            return
        if depth > 32:
            raise ValueError("imports nest deeper than 32")
        proto = by_name.get(name) or _library_file(name)
        for dependency in proto.dependency:
            add(dependency, depth + 1)
        pool.Add(proto)
        added.add(name)

    for proto in protos:
        add(proto.name)
    return pool


def _library_file(name: str) -> Any:
    """The ``FileDescriptorProto`` of a well-known file (``google/protobuf/…``)."""
    stem = name.rsplit("/", 1)[-1].removesuffix(".proto")
    if name.startswith("google/protobuf/") and stem in _LIBRARY:
        module = importlib.import_module(f"google.protobuf.{stem}_pb2")
    elif name.startswith("google/type/") and stem in _GOOGLE_TYPE:
        try:
            module = importlib.import_module(f"google.type.{stem}_pb2")
        except ImportError:
            raise ValueError(f"{name} needs googleapis-common-protos installed") from None
    else:
        raise ValueError(f"the schema imports {name}, which has no reference")
    return descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)


def message_at(pool: Any, proto: Any, path: Sequence[int]) -> Any:
    """The message descriptor of ``proto`` at message indexes ``path``."""
    prefix = f"{proto.package}." if proto.package else ""
    messages = proto.message_type
    names = []
    for index in path:
        if not 0 <= index < len(messages):
            raise ValueError(f"no message at indexes {list(path)}")
        names.append(messages[index].name)
        messages = messages[index].nested_type
    return pool.FindMessageTypeByName(prefix + ".".join(names))


def decoder(schema: str, references: Sequence[tuple[str, str]]) -> Callable[[bytes], bytes]:
    """Payload (message indexes, then the message) → canonical proto3 JSON text."""
    protos = files(schema, references)
    pool = pool_of(protos)
    classes: dict[tuple[int, ...], type[Message]] = {}

    def decode(payload: bytes) -> bytes:
        path, at = indexes(payload)
        cls = classes.get(path)
        if cls is None:
            cls = classes[path] = message_factory.GetMessageClass(
                message_at(pool, protos[-1], path)
            )
        message = cls.FromString(payload[at:])
        as_dict = json_format.MessageToDict(message, preserving_proto_field_name=True)
        return orjson.dumps(as_dict)

    return decode


def encoder(schema: str, message: str | None) -> tuple[Callable[[object], bytes], str]:
    """Encode a JSON value (as parsed) as ``message`` of ``schema`` (.proto text; default its
    first message) with its message indexes (``wsrt produce``); and the message's name.
    Raises ``ValueError`` naming what does not fit."""
    protos = files(schema, ())
    pool = pool_of(protos)
    own = protos[-1]
    paths = _paths(own.message_type, ())
    if not paths:
        raise ValueError("the schema declares no message")
    wanted = message or next(iter(paths))
    if wanted not in paths:
        raise ValueError(f"no message {wanted} (it has {', '.join(paths)})")
    path = paths[wanted]
    cls = message_factory.GetMessageClass(message_at(pool, own, path))
    prefix = index_bytes(path)

    def encode(value: object) -> bytes:
        try:
            parsed = json_format.ParseDict(value, cls())
        except json_format.ParseError as exc:
            raise ValueError(f"does not fit the schema ({exc})") from None
        return prefix + bytes(parsed.SerializeToString())

    return encode, wanted


def _paths(messages: Any, at: tuple[int, ...], prefix: str = "") -> dict[str, tuple[int, ...]]:
    """Message names (``Outer.Inner``) → their indexes, in declaration order."""
    out: dict[str, tuple[int, ...]] = {}
    for n, m in enumerate(messages):
        out[prefix + m.name] = (*at, n)
        out |= _paths(m.nested_type, (*at, n), f"{prefix}{m.name}.")
    return out
