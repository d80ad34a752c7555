"""The benchmark baseline: fan-out with ``websockets.broadcast()`` per message.

This is how a straightforward server distributes messages: for each message,
``broadcast()`` frames it for every subscriber and writes it. The benchmark
runs it beside the real hub, in the same run, through the public API only:
``python -m wsrt.bench.baseline`` is ``wsrt serve`` with this hub plugged in.
Operators never need it; it does not ship in the package.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from websockets.asyncio.server import ServerConnection, broadcast

from wsrt import app
from wsrt.config import load_settings
from wsrt.hub import Hub
from wsrt.logs import setup_logging
from wsrt.outlet import Outlet, Record
from wsrt.wire import frame_payload


class BroadcastHub(Hub):
    """Same routing as :class:`Hub`, delivery by ``broadcast()`` per message."""

    def publish(self, batch: Sequence[Record]) -> list[Outlet]:
        for record in batch:
            connections = [
                o.peer for o in self.subscribers(record.topic, record.key)
                if isinstance(o.peer, ServerConnection)
            ]  # fmt: skip
            broadcast(connections, frame_payload(record.frame).decode())
        return []


def main() -> int:
    settings = load_settings(require_secret=True)
    setup_logging(settings.log_format, settings.log_level)
    return app.run(settings, BroadcastHub)


if __name__ == "__main__":
    sys.exit(main())
