"""A benchmark baseline only: fan-out with ``websockets.broadcast()`` per message.

This is how a straightforward server distributes messages: for each message,
``broadcast()`` frames it for every subscriber and writes it. ``wsrt bench``
runs it beside the real hub (``wsrt serve --baseline-broadcast``, a hidden
flag) so both are measured in the same run. Operators never need it.
"""

from __future__ import annotations

from collections.abc import Sequence

from websockets.asyncio.server import ServerConnection, broadcast

from wsrt.hub import Hub, Outlet, Record


def _payload(frame: bytes) -> bytes:
    length = frame[1] & 0x7F
    return frame[2 + {126: 2, 127: 8}.get(length, 0) :]


class BroadcastHub(Hub):
    """Same routing as :class:`Hub`, delivery by ``broadcast()`` per message."""

    def __init__(self, topics: Sequence[str]) -> None:
        super().__init__(topics)
        self._connections: dict[str, list[ServerConnection]] = {}

    def subscribe(self, outlet: Outlet, topic: str, key: str | None = None) -> None:
        super().subscribe(outlet, topic, key)
        self._connections.clear()

    def unsubscribe(self, outlet: Outlet, topic: str, key: str | None = None) -> None:
        super().unsubscribe(outlet, topic, key)
        self._connections.clear()

    def publish(self, batch: Sequence[Record]) -> None:
        for record in batch:
            connections = self._connections.get(record.topic)
            if connections is None:
                whole = self._whole.get(record.topic, set())
                connections = [getattr(o, "connection") for o in whole]  # noqa: B009
                self._connections[record.topic] = connections
            keyed = self._keyed.get(record.topic, {}).get(record.key or b"", set())
            targets = connections + [getattr(o, "connection") for o in keyed]  # noqa: B009
            broadcast(targets, _payload(record.frame).decode())
