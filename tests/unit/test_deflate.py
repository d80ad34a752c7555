"""wsrt/deflate.py: frames compressed once, read back by zlib as RFC 7692 says."""

from __future__ import annotations

import zlib

from wsrt.deflate import Deflater, frames
from wsrt.wire import text_frame


def inflate(data: bytes) -> list[tuple[int, bytes]]:
    out = []
    for first, payload in frames(data):
        if first & 0x40:
            payload = zlib.decompressobj(-zlib.MAX_WBITS).decompress(payload + b"\x00\x00\xff\xff")
        out.append((first, payload))
    return out


def test_each_text_frame_of_a_run_is_compressed_on_its_own_and_made_once() -> None:
    payloads = [b'{"n":%d,"pad":"%s"}' % (n, b"x" * n * 50) for n in (1, 3, 2000)]
    run = b"".join(text_frame(p) for p in payloads) + b"\x89\x00"  # and a ping, as it is
    deflater = Deflater()
    compressed = deflater.chunk(run)
    assert inflate(compressed) == [(0xC1, p) for p in payloads] + [(0x89, b"")]
    assert len(compressed) < len(run) / 5
    assert deflater.chunk(run) is compressed and deflater.compressed == 1  # the same run: kept
    other = bytes(bytearray(run))  # equal bytes, another run: made again
    assert deflater.chunk(other) == compressed and deflater.compressed == 2
    for n in range(70):
        deflater.chunk(text_frame(b"%d" % n))
    assert deflater.chunk(run) is not compressed and deflater.compressed == 73  # forgotten
