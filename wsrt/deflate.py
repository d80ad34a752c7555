"""permessage-deflate for pre-built frames: each frame compressed once, Sans-I/O.

With ``WS_COMPRESSION=deflate`` the server offers permessage-deflate
(RFC 7692) with ``server_no_context_takeover``: every message the server
sends is compressed on its own, so the compressed bytes of a frame are the
same for every client that accepted the extension, and they are made once.
:meth:`Deflater.chunk` turns a run of the hub's text frames (what one write
carries) into the same messages compressed (RSV1 set), keeping the last
results by the identity of the run: the hub hands every subscriber of a
batch the same ``bytes`` object, so the second to the thousandth client cost
a dictionary lookup. A message left uncompressed (RSV1 clear) is as valid
as ever: clients that did not negotiate the extension get plain frames.
"""

from __future__ import annotations

import struct
import zlib
from collections import OrderedDict
from collections.abc import Iterator

#: zlib's level: 6 is its default, the usual balance of size and CPU.
LEVEL = 6
#: Compressed runs kept for the next client that is handed the same run.
KEEP = 64
#: What a sync flush ends with; RFC 7692 section 7.2.1 drops it from the message.
_TAIL = b"\x00\x00\xff\xff"
_TEXT, _TEXT_COMPRESSED = 0x81, 0xC1


def frames(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(first byte, payload) of each unmasked frame in ``data``."""
    at, end = 0, len(data)
    while at < end:
        first, length = data[at], data[at + 1] & 0x7F
        at += 2
        if length == 126:
            (length,) = struct.unpack_from("!H", data, at)
            at += 2
        elif length == 127:
            (length,) = struct.unpack_from("!Q", data, at)
            at += 8
        yield first, data[at : at + length]
        at += length


def header(first: int, length: int) -> bytes:
    if length < 126:
        return bytes((first, length))
    if length < 1 << 16:
        return struct.pack("!BBH", first, 126, length)
    return struct.pack("!BBQ", first, 127, length)


def compress(payload: bytes, level: int = LEVEL) -> bytes:
    """One message's payload, deflated on its own (no context taken over)."""
    deflater = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = deflater.compress(payload) + deflater.flush(zlib.Z_SYNC_FLUSH)
    return out[:-4] if out.endswith(_TAIL) else out


class Deflater:
    """Compressed runs of frames, each made once (``compressed`` counts the runs made)."""

    def __init__(self, level: int = LEVEL, keep: int = KEEP) -> None:
        self.level = level
        self.keep = keep
        self._made: OrderedDict[int, tuple[bytes, bytes]] = OrderedDict()
        self.compressed = 0

    def chunk(self, data: bytes) -> bytes:
        """``data`` (text frames) as the same messages compressed; other frames as they are."""
        made = self._made.get(id(data))
        if made is not None and made[0] is data:
            return made[1]
        out: list[bytes] = []
        for first, payload in frames(data):
            if first == _TEXT:
                z = compress(payload, self.level)
                out += (header(_TEXT_COMPRESSED, len(z)), z)
            else:
                out += (header(first, len(payload)), payload)
        result = b"".join(out)
        self.compressed += 1
        self._made[id(data)] = (data, result)
        if len(self._made) > self.keep:
            self._made.popitem(last=False)
        return result
