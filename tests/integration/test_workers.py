"""``WS_WORKERS``: worker processes on one port, one node's /healthz and /metrics, restarts."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import urllib.error
import urllib.request

import websockets

from tests.integration.harness import auth, next_json
from wsrt.metrics import parse


def get(url: str, timeout: float = 10) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def by_worker(text: str, name: str) -> dict[str, float]:
    return {
        dict(labels)["worker"]: value
        for (sample, labels), value in parse(text).items()
        if sample == name
    }


def wait_workers_ready(server, workers: set[int], start: int = 0) -> None:
    """Until each of ``workers`` logged readiness ok (after ``start``)."""
    waiting = set(workers)
    while waiting:
        event = server.wait_for(
            "readiness",
            lambda e: e.get("status") == "ok" and e.get("worker") in waiting,
            start=start,
        )
        waiting.discard(event["worker"])


async def receive(ws, count: int) -> list[tuple[int, int]]:
    got = []
    while len(got) < count:
        msg = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if msg["type"] == "message":
            got.append((msg["partition"], msg["offset"]))
    return got


async def test_workers_share_the_port_and_answer_for_the_whole_node(
    make_topics, servers, producer
) -> None:
    (topic,) = await make_topics("lines", partitions=2)
    server = servers([topic], {"WS_WORKERS": "2"}, ready=False)
    wait_workers_ready(server, {0, 1})
    started = server.wait_for("workers_started")
    assert started["workers"] == 2
    listening = [e for e in server.events if e["event"] == "listening"]
    assert sorted(e["worker"] for e in listening) == [0, 1]
    assert {e["port"] for e in listening} == {server.port}
    # Each worker is a broadcast consumer of its own: its own commit group.
    assert len({e["group"] for e in listening}) == 2

    clients = [
        await websockets.connect(f"{server.url}?channels={topic}", additional_headers=auth(f"c{i}"))
        for i in range(24)
    ]
    for ws in clients:
        assert (await next_json(ws))["type"] == "subscribed"
    status, body = get(f"{server.http}/healthz")
    assert status == 200, body
    assert json.loads(body) == {"status": "ok", "workers": 2, "connections": 24}
    # The kernel spread the connections; one scrape shows both workers.
    open_by_worker = by_worker(get(f"{server.http}/metrics")[1], "wsrt_connections")
    assert set(open_by_worker) == {"0", "1"} and sum(open_by_worker.values()) == 24
    assert all(n > 0 for n in open_by_worker.values()), open_by_worker

    sent = []
    for n in range(40):
        meta = await producer.send_and_wait(topic, b'{"n":%d}' % n, key=b"k%d" % (n % 4))
        sent.append((meta.partition, meta.offset))
    for ws in clients:
        got = await receive(ws, len(sent))
        assert sorted(got) == sorted(sent)  # every record, once
        for partition in (0, 1):  # in order per partition
            offsets = [o for p, o in got if p == partition]
            assert offsets == sorted(offsets)
    delivered = by_worker(get(f"{server.http}/metrics")[1], "wsrt_frames_delivered_total")
    assert sum(delivered.values()) >= 24 * 40

    # A worker that dies is replaced; meanwhile the node is not ready.
    victim = next(e for e in listening if e["worker"] == 0)
    pids = [int(p) for p in started["pids"].split(",")]
    mark = server.mark()
    os.kill(pids[0], signal.SIGKILL)
    exited = await asyncio.to_thread(server.wait_for, "worker_exited", start=mark)
    assert exited["worker"] == 0 and exited["code"] == -9
    again = await asyncio.to_thread(
        server.wait_for, "listening", lambda e: e["worker"] == 0, start=mark
    )
    assert again["group"] == victim["group"]  # the same commit group resumes
    await asyncio.to_thread(wait_workers_ready, server, {0}, mark)
    assert get(f"{server.http}/healthz")[0] == 200

    # SIGTERM drains every worker (clients get 1001) and the parent exits 0.
    survivors = [ws for ws in clients if ws.close_code is None]
    mark = server.mark()
    server.signal()
    assert await asyncio.to_thread(server.wait_exit) == 0
    for ws in survivors:
        await ws.wait_closed()
        assert ws.close_code in (1001, 1006)
    assert any(ws.close_code == 1001 for ws in survivors)
    stopped = server.wait_for("workers_stopped", start=mark)
    assert stopped["codes"] == "0,0"


async def test_a_node_with_an_unready_worker_is_not_ready(make_topics, servers) -> None:
    (topic,) = await make_topics("lines")
    server = servers([topic], {"WS_WORKERS": "2"}, ready=False)
    wait_workers_ready(server, {0, 1})
    started = server.wait_for("workers_started")
    pids = [int(p) for p in started["pids"].split(",")]
    # A stopped worker (SIGSTOP) answers nobody: its siblings say so.
    os.kill(pids[1], signal.SIGSTOP)
    try:
        status, body = 0, ""
        for _ in range(20):  # the kernel sends a request to either worker
            try:
                status, body = get(f"{server.http}/healthz", timeout=2)
            except OSError:  # it went to the stopped one
                continue
            if status == 503:
                break
        assert status == 503, body
        assert json.loads(body)["reason"] == "worker 1: not answering (starting or restarting)"
    finally:
        os.kill(pids[1], signal.SIGCONT)
    assert get(f"{server.http}/healthz")[0] == 200
    # Ctrl-C in a terminal signals the whole foreground group: only the parent
    # may get it, or the workers would take its SIGTERM as a second signal.
    mark = server.mark()
    os.killpg(server.pid, signal.SIGINT)
    assert await asyncio.to_thread(server.wait_exit) == 0
    assert server.wait_for("workers_stopped", start=mark)["codes"] == "0,0"
    assert not [e for e in server.events[mark:] if e["event"] == "shutdown_forced"]


async def test_a_crash_looping_worker_stops_the_node_with_a_plain_reason(
    make_topics, servers
) -> None:
    """A worker that keeps dying right after its start is not restarted for ever."""
    from wsrt.workers import MAX_QUICK_EXITS

    (topic,) = await make_topics("lines")
    server = servers([topic], {"WS_WORKERS": "2"}, ready=False)
    wait_workers_ready(server, {0, 1})
    pid = int(server.wait_for("workers_started")["pids"].split(",")[0])
    for death in range(MAX_QUICK_EXITS):
        mark = server.mark()
        os.kill(pid, signal.SIGKILL)  # as an OOM killer would, each time it comes back
        if death < MAX_QUICK_EXITS - 1:
            started = await asyncio.to_thread(
                server.wait_for, "worker_started", lambda e: e["worker"] == 0, start=mark
            )
            pid = started["pid"]
    assert await asyncio.to_thread(server.wait_exit) == 1
    looping = server.wait_for("workers_crash_looping")
    assert looping["message"].startswith(f"worker 0 exited {MAX_QUICK_EXITS} times in a row")
    assert "last exit code -9" in looping["message"]
    # The healthy worker was drained, not left behind.
    assert server.wait_for("workers_stopped")["codes"].split(",")[1] == "0"
