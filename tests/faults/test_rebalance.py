"""Shared mode: a rebalance in the middle of a replay, and while producers write.

aiokafka revokes every partition on each rebalance, so a replica whose
replays and live stream lose track there drops or repeats records. The
client here resumes exactly as docs/protocol.md tells it: from ``positions``,
and a partition announced ``revoked`` from its ``next`` at the replica that
owns it now. Every produced (partition, offset) must reach it once, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from typing import Any

import pytest
import websockets

from tests.integration.harness import auth
from tests.integration.test_replay import SteadyProducer

pytestmark = pytest.mark.integration

PARTITIONS = 2
HISTORY = 600  # per partition


class Account:
    """What one logical client received, per partition, over any connections."""

    def __init__(self) -> None:
        self.got: dict[int, list[int]] = {}
        self.revoked: dict[int, int] = {}
        self.other: list[dict[str, Any]] = []

    def take(self, frame: dict[str, Any]) -> None:
        if frame["type"] == "message":
            self.got.setdefault(frame["partition"], []).append(frame["offset"])
        elif frame["type"] == "revoked":
            self.revoked[frame["partition"]] = frame["next"]
        else:
            self.other.append(frame)

    def reached(self, last: dict[int, int], partitions: set[int]) -> bool:
        return all(self.got.get(p) and self.got[p][-1] >= last[p] for p in partitions)


async def read_until(ws: Any, account: Account, done: Any, timeout: float = 90) -> None:
    async def run() -> None:
        while not done():
            account.take(json.loads(await ws.recv()))

    try:
        await asyncio.wait_for(run(), timeout)
    except TimeoutError:
        tails = {p: o[-3:] for p, o in account.got.items()}
        raise AssertionError(
            f"tails {tails}, revoked {account.revoked}, {account.other[-3:]}"
        ) from None


async def fill(producer: Any, topic: str) -> dict[int, list[int]]:
    futures = [
        await producer.send(topic, b'{"n":%d}' % n, partition=n % PARTITIONS)
        for n in range(HISTORY * PARTITIONS)
    ]
    produced: dict[int, list[int]] = {}
    for future in futures:
        md = await future
        produced.setdefault(md.partition, []).append(md.offset)
    return produced


@pytest.mark.timeout(300)
async def test_a_rebalance_mid_replay_loses_nothing_and_repeats_nothing(
    make_topics, servers, producer
) -> None:
    (topic,) = await make_topics("rebalance", partitions=PARTITIONS)
    history = await fill(producer, topic)
    env = {
        "WS_FANOUT_MODE": "shared",
        "WS_KAFKA_GROUP_ID": f"rebalance-{uuid.uuid4().hex[:6]}",
        "WS_REPLAY_RATE": "100",  # the replay is still reading when the group changes
        "WS_LOG_LEVEL": "INFO",
    }
    a = servers([topic], env)
    account = Account()
    steady = SteadyProducer(producer, topic, PARTITIONS)
    async with websockets.connect(a.url, additional_headers=auth()) as ws:
        await ws.send(json.dumps({
            "type": "subscribe", "channel": topic, "id": 1,
            "since": {str(p): 0 for p in range(PARTITIONS)},
        }))  # fmt: skip
        reply = json.loads(await ws.recv())
        assert reply["positions"] == {"0": 0, "1": 0} and reply["complete"], reply
        await read_until(ws, account, lambda: sum(map(len, account.got.values())) >= 40)

        async with steady.running():
            mark = a.mark()
            b = servers([topic], env)  # joins the group: every partition is revoked on A
            rebalancing = a.wait_for(
                "readiness", lambda e: e.get("reason", "").startswith("rebalancing"), start=mark
            )
            assert rebalancing["status"] != "ok"  # /healthz says A holds nothing meanwhile
            a.wait_for("readiness", lambda e: e.get("status") == "ok", start=mark)
            b.wait_ready()
        produced = {p: history[p] + steady.produced.get(p, []) for p in range(PARTITIONS)}
        last = {p: offsets[-1] for p, offsets in produced.items()}

        def settled() -> bool:
            kept = {p for p in range(PARTITIONS) if p not in account.revoked}
            return bool(account.revoked) and account.reached(last, kept)

        await read_until(ws, account, settled)
    assert len(account.revoked) < PARTITIONS, "A kept no partition: the test shows nothing"

    # What moved is resumed at its new owner from the offset A gave.
    moved = set(account.revoked)
    async with websockets.connect(b.url, additional_headers=auth()) as ws:
        since = {str(p): account.revoked[p] for p in moved}
        await ws.send(json.dumps({"type": "subscribe", "channel": topic, "id": 2, "since": since}))
        reply = json.loads(await ws.recv())
        assert reply["positions"] == since and reply["complete"], reply
        await read_until(ws, account, lambda: account.reached(last, moved))

    for p in range(PARTITIONS):
        assert account.got[p] == produced[p], f"partition {p}"  # once each, in order
    assert not [f for f in account.other if f["type"] == "gap"], account.other


#: A snapshot far larger than the socket buffers: it pauses while the client stops reading.
STATE_KEYS = 4000
STATE_VALUE = b'{"pad":"' + b"x" * 4000 + b'","n":%d}'


@pytest.mark.timeout(300)
async def test_a_rebalance_mid_snapshot_opens_no_gap(make_topics, servers, producer) -> None:
    """A client takes a snapshot from A and stops reading halfway; B joins the group.

    The snapshot is the state at ``positions``; what A no longer owns is
    resumed at B from the ``next`` of its ``revoked``. Every key's newest value
    must end up at the client, and every record at or after ``positions``
    exactly once, in order.
    """
    (topic,) = await make_topics("rebalance-state", partitions=PARTITIONS)
    newest: dict[str, tuple[int, int]] = {}
    futures = [
        (f"k{n}", await producer.send(
            topic, STATE_VALUE % n, key=b"k%d" % n, partition=n % PARTITIONS
        ))
        for n in range(STATE_KEYS)
    ]  # fmt: skip
    for key, future in futures:
        md = await future
        newest[key] = (md.partition, md.offset)
    env = {
        "WS_FANOUT_MODE": "shared",
        "WS_KAFKA_GROUP_ID": f"rebalance-state-{uuid.uuid4().hex[:6]}",
        "WS_STATE_TOPICS": topic,
        "WS_LOG_LEVEL": "INFO",
    }
    a = servers([topic], env)
    state: dict[str, tuple[int, int]] = {}  # key → (partition, offset) of the value held
    after: dict[int, list[int]] = {}  # records at or after positions, per partition
    revoked: dict[int, int] = {}
    ended: list[dict[str, Any]] = []
    steady = SteadyProducer(producer, topic, PARTITIONS, keys=STATE_KEYS)

    def take(frame: dict[str, Any]) -> None:
        if frame["type"] == "message":
            place = (frame["partition"], frame["offset"])
            if frame.get("snapshot"):
                assert frame["key"] not in state and not ended, frame["key"]  # once, first
                assert frame["offset"] < positions[frame["partition"]]
            else:
                after.setdefault(frame["partition"], []).append(frame["offset"])
            state[frame["key"]] = place
        elif frame["type"] == "revoked":
            revoked[frame["partition"]] = frame["next"]
        elif frame["type"] == "snapshot_end":
            ended.append(frame)
        else:
            raise AssertionError(frame)

    async with websockets.connect(a.url, additional_headers=auth(), max_size=None) as ws:
        await ws.send(json.dumps({"type": "subscribe", "channel": topic, "snapshot": True}))
        reply = json.loads(await ws.recv())
        positions = {int(p): o for p, o in reply["positions"].items()}
        assert set(positions) == set(range(PARTITIONS)), reply
        for _ in range(10):
            take(json.loads(await ws.recv()))
        # It reads nothing now: the snapshot pauses on the full socket meanwhile.
        async with steady.running():
            mark = a.mark()
            b = servers([topic], env)  # joins the group: every partition is revoked on A
            a.wait_for(
                "readiness", lambda e: e.get("reason", "").startswith("rebalancing"), start=mark
            )
            a.wait_for("readiness", lambda e: e.get("status") == "ok", start=mark)
            b.wait_ready()
            await steady.written(steady.count + 100)  # some after the group changed too
        last = steady.last
        before = len(state)

        def settled() -> bool:
            kept = [p for p in range(PARTITIONS) if p not in revoked]
            return bool(revoked) and all(after.get(p, [-1])[-1] >= last[p] for p in kept)

        async def read(done: Any) -> None:
            while not done():
                take(json.loads(await ws.recv()))

        await asyncio.wait_for(read(settled), 90)
    assert before < STATE_KEYS, "the snapshot was not under way when the group changed"
    assert ended and ended[0]["keys"] == STATE_KEYS and ended[0]["complete"], ended
    assert len(revoked) < PARTITIONS, "A kept no partition: the test shows nothing"

    moved = set(revoked)
    async with websockets.connect(b.url, additional_headers=auth(), max_size=None) as ws:
        since = {str(p): revoked[p] for p in moved}
        await ws.send(json.dumps({"type": "subscribe", "channel": topic, "since": since}))
        reply = json.loads(await ws.recv())
        assert reply["positions"] == since and reply["complete"], reply

        def reached() -> bool:
            return all(after.get(p, [-1])[-1] >= last[p] for p in moved)

        await asyncio.wait_for(read(reached), 90)

    for p in range(PARTITIONS):  # from positions on: every record once, in order
        produced = [o for o in steady.produced[p] if o >= positions[p]]
        assert after.get(p, []) == produced, f"partition {p}"
    expected = {**newest, **{k: (int(k[1:]) % PARTITIONS, o) for k, o in steady.newest.items()}}
    assert state == expected  # every key's newest value, none missed


class Follower:
    """A client of every partition, connected to both replicas, as docs/protocol.md says.

    Each connection subscribes with ``since`` at the client's own positions,
    and does so again when it reopens (a replica restarted) or when a replica
    says it now serves a partition from another offset than the client's
    (``assigned``): then the frames of that partition on the old subscription
    are superseded by the new one's, which starts at the client's position.
    Everything else is counted: a message below the client's position is a
    duplicate, one above it a loss.
    """

    def __init__(self, name: str, topic: str, progress: asyncio.Event) -> None:
        self.name = name
        #: Set on every message taken, for whoever waits for the followers.
        self.progress = progress
        self.topic = topic
        self.next: dict[int, int] = {}
        self.got: dict[int, list[int]] = {}
        self.duplicated = 0
        self.lost = 0
        self.gaps: list[dict[str, Any]] = []
        self._ids = 0
        self.stopping = asyncio.Event()

    def since(self) -> dict[str, int]:
        return {str(p): o for p, o in self.next.items()}

    async def _send_subscribe(self, ws: Any) -> None:
        self._ids += 1
        frame = {"type": "subscribe", "channel": self.topic, "id": self._ids, "since": self.since()}
        await ws.send(json.dumps(frame))

    async def follow(self, url: str) -> None:
        """Stay connected to ``url`` (reconnecting while it restarts) until stopped."""
        while not self.stopping.is_set():
            try:
                async with websockets.connect(url, additional_headers=auth(self.name)) as ws:
                    await self._session(ws)
            except (OSError, websockets.exceptions.WebSocketException):
                pass
            if not self.stopping.is_set():
                # Reconnect pacing while the replica restarts, not synchronisation.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), 0.2)

    async def _session(self, ws: Any) -> None:
        superseded: set[int] = set()
        resubscribing = False
        await self._send_subscribe(ws)
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            while True:
                recv = asyncio.ensure_future(ws.recv())
                await asyncio.wait({recv, stop}, return_when=asyncio.FIRST_COMPLETED)
                if not recv.done():
                    recv.cancel()
                    return
                frame = json.loads(recv.result())
                kind = frame["type"]
                if kind == "message":
                    p, o = frame["partition"], frame["offset"]
                    if p in superseded:
                        continue
                    expected = self.next.get(p)
                    if expected is not None and o < expected:
                        self.duplicated += 1
                        continue
                    if expected is not None and o > expected:
                        self.lost += o - expected
                    self.got.setdefault(p, []).append(o)
                    self.next[p] = o + 1
                    self.progress.set()
                elif kind == "subscribed":
                    for p, o in (frame.get("positions") or {}).items():
                        self.next.setdefault(int(p), o)
                    superseded.clear()
                    resubscribing = False
                elif kind == "unsubscribed":
                    await self._send_subscribe(ws)
                elif kind == "assigned":
                    p = frame["partition"]
                    if p in self.next and frame["from"] != self.next[p]:
                        superseded.add(p)
                        if not resubscribing:
                            resubscribing = True
                            await ws.send(
                                json.dumps({"type": "unsubscribe", "channel": self.topic})
                            )
                    elif p not in self.next:
                        self.next[p] = frame["from"]
                elif kind == "gap":
                    self.gaps.append(frame)
                    self.next[frame["partition"]] = frame["to"] + 1
                elif kind == "error":
                    raise AssertionError(f"{self.name}: {frame}")
        finally:
            stop.cancel()


@pytest.mark.timeout(300)
async def test_a_rolling_restart_of_two_shared_replicas_under_load_loses_and_repeats_nothing(
    make_topics, servers, producer
) -> None:
    from wsrt.brokers import free_port

    (topic,) = await make_topics("rolling", partitions=4)
    env = {
        "WS_FANOUT_MODE": "shared",
        "WS_KAFKA_GROUP_ID": f"rolling-{uuid.uuid4().hex[:6]}",
        "WS_LOG_LEVEL": "INFO",
        "WS_SHUTDOWN_TIMEOUT_SECONDS": "10",
    }
    binds = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    replicas = [servers([topic], {**env, "WS_BIND_ADDRESS": bind}) for bind in binds]
    urls = [r.url for r in replicas]
    progress = asyncio.Event()
    followers = [Follower(f"f{i}", topic, progress) for i in range(4)]
    tasks = [asyncio.create_task(f.follow(url)) for f in followers for url in urls]
    steady = SteadyProducer(producer, topic, 4)
    try:
        async with steady.running():
            for i in (0, 1, 0, 1):  # roll: each replica twice, one at a time
                replicas[i].stop()  # SIGTERM: drains with 1001, commits, leaves the group
                replicas[i] = servers([topic], {**env, "WS_BIND_ADDRESS": binds[i]})
                for other in replicas:
                    other.wait_ready()
        last = steady.last

        def caught_up() -> bool:
            return all(
                all(f.got.get(p) and f.got[p][-1] >= o for p, o in last.items()) for f in followers
            )

        while not caught_up():  # every follower has every partition's last record
            progress.clear()
            await asyncio.wait_for(progress.wait(), 60)
    finally:
        for f in followers:
            f.stopping.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    for f in followers:
        report = f"{f.name}: lost {f.lost}, duplicated {f.duplicated}, gaps {f.gaps}"
        assert f.lost == 0 and f.duplicated == 0 and not f.gaps, report
        for p, offsets in steady.produced.items():
            got = [o for o in f.got.get(p, []) if o >= offsets[0]]
            assert got == offsets[: len(got)] and len(got) == len(offsets), (f.name, p)
