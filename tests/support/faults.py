"""``wsrt serve`` with one fault injected, for the reliability tests.

Run as ``python -m tests.support.faults serve …`` with ``WSRT_INJECT`` naming
the fault. Everything else is the real server on a real broker; the fault is
the smallest patch that makes the failure happen for real:

* ``consumer_raises``: encoding the record ``{"explode":1}`` raises once —
  an unexpected exception inside the consumer loop;
* ``client_write_raises``: writing a message frame to a client whose token
  subject is ``faulty`` raises;
* ``consumer_goes_quiet``: once a fetch returns ``{"stall":1}``, that
  consumer returns nothing any more (records wait, none is delivered);
* ``consumer_hangs``: once a fetch returns ``{"stall":1}``, that consumer's
  next fetch never returns (the loop stops turning);
* ``positioning_waits_for_a_replay``: the consumer positions its partitions
  only after a subscribe with a start field arrived, as when a client that
  resumes reaches a restarted server before its consumer is ready.

The stall faults hit only the first consumer, so a replacement works.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

TRIGGER_RAISE = b'{"explode":1}'
TRIGGER_STALL = b'{"stall":1}'


def _consumer_raises() -> None:
    from wsrt import wire

    real = wire.Envelopes.frame
    fired = False

    def frame(self: wire.Envelopes, *args: Any) -> tuple[bytes, bool]:
        nonlocal fired
        if args[5] == TRIGGER_RAISE and not fired:  # the value
            fired = True
            raise RuntimeError("injected: the consumer loop meets an unexpected error")
        return real(self, *args)

    # The live stream meets the record first: replays of it come later.
    setattr(wire.Envelopes, "frame", frame)  # noqa: B010


def _client_write_raises() -> None:
    from wsrt.gateway.ws_adapter import Connection

    real = Connection.frame_writer

    def frame_writer(self: Connection) -> Callable[[bytes], None]:
        write = real(self)
        if self.admitted is None or self.admitted.claims.subject != "faulty":
            return write

        def failing(data: bytes) -> None:
            if b'"type":"message"' in data:
                raise RuntimeError("injected: this client's transport fails")
            write(data)

        return failing

    Connection.frame_writer = frame_writer  # type: ignore[method-assign]


def _consumer_stalls(hang: bool) -> None:
    from aiokafka import AIOKafkaConsumer

    real = AIOKafkaConsumer.getmany
    state: dict[str, Any] = {"victim": None}

    async def getmany(self: AIOKafkaConsumer, *partitions: Any, **kwargs: Any) -> Any:
        if state["victim"] is self:
            if hang:
                await asyncio.Event().wait()
            await real(self, *partitions, **kwargs)
            return {}
        batches = await real(self, *partitions, **kwargs)
        if state["victim"] is None and any(
            m.value == TRIGGER_STALL for records in batches.values() for m in records
        ):
            state["victim"] = self
            return {}  # this batch is dropped too: the replacement must fetch it again
        return batches

    AIOKafkaConsumer.getmany = getmany


def _positioning_waits_for_a_replay() -> None:
    from wsrt.gateway.connection import Connections
    from wsrt.kafka.assign import Assigner

    arrived: asyncio.Event | None = None

    def event() -> asyncio.Event:
        nonlocal arrived
        arrived = arrived or asyncio.Event()
        return arrived

    start_replay = Connections._start_replay
    refresh = Assigner.refresh

    def started(self: Connections, *args: Any) -> None:
        start_replay(self, *args)
        event().set()

    async def refreshed(self: Assigner, *args: Any) -> None:
        await event().wait()  # set for good: only the first positioning waits
        await refresh(self, *args)

    setattr(Connections, "_start_replay", started)  # noqa: B010 (patched on the class)
    setattr(Assigner, "refresh", refreshed)  # noqa: B010


FAULTS: dict[str, Callable[[], None]] = {
    "positioning_waits_for_a_replay": _positioning_waits_for_a_replay,
    "consumer_raises": _consumer_raises,
    "client_write_raises": _client_write_raises,
    "consumer_goes_quiet": lambda: _consumer_stalls(hang=False),
    "consumer_hangs": lambda: _consumer_stalls(hang=True),
}


def main() -> None:
    FAULTS[os.environ["WSRT_INJECT"]]()
    from wsrt.cli import main as wsrt_main

    wsrt_main()


if __name__ == "__main__":
    main()
