"""``wsrt bench``: scenarios on a real broker, a real server process and a load client.

Every scenario starts its own ``wsrt serve`` on loopback, a load client in
another process (:mod:`wsrt.bench.client`), feeds Kafka, and stops by itself
within its time bound. Figures are printed with the machine, the versions and
the parameters; ratios are taken between runs of the same invocation, since
the machine is shared and noisy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

from wsrt.brokers import Broker, create_topics
from wsrt.config import load_settings
from wsrt.metrics import total
from wsrt.tokens import mint_token
from wsrt.tools.client import scrape, wait_healthy
from wsrt.tools.server import ServerProcess
from wsrt.wire import record_frame

#: The checkout: the load client and the baseline server run as modules of tests/.
ROOT = Path(__file__).resolve().parents[2]
SECRET = "wsrt-bench-secret-0123456789abcdef0123456789"
#: A message value of about the size the design measured with (about 200 bytes).
VALUE = (
    b'{"symbol":"BTC-USD","seq":%d,"bids":[[97000.5,0.4201],[96999.9,1.25],[96998.1,0.07]],'
    b'"asks":[[97001.2,0.3310],[97001.9,2.5],[97003.4,0.11]],"venue":"bench","ts":0}'
)


@dataclass
class Scale:
    """Counts and durations of one invocation (full or quick)."""

    fanout_clients: int = 1000
    fanout_messages: int = 30_000
    fanout_window: float = 10.0
    latency_clients: int = 1000
    latency_rate: float = 100.0
    latency_seconds: float = 60.0
    #: The workers scenario: messages/s to 1,000 clients that one process cannot keep up with.
    workers_rate: float = 500.0
    isolation_seconds: float = 30.0
    samplers: int = 20
    #: WS_CLIENT_BUFFER of the isolation scenario.
    isolation_buffer: int = 256
    idle_connections: int = 100_000
    handshake_concurrency: int = 200
    #: The handshakes scenario: connections per algorithm and round, and rounds.
    handshake_count: int = 5000
    handshake_rounds: int = 3
    #: The sse scenario: rounds of the latency scenario over WebSocket, then over SSE.
    transport_rounds: int = 2
    #: Replay isolation: clients each replaying this many messages beside the live ones.
    replay_clients: int = 20
    replay_messages: int = 100_000
    replay_seconds: float = 120.0
    #: Slow-consumer policies: clients on one order book, some reading at a tenth of the rate.
    policy_clients: int = 1000
    policy_slow: int = 100
    policy_keys: int = 100
    policy_rate: float = 200.0
    policy_seconds: float = 30.0
    #: Hostile clients at every limit at once: how many, and their records.
    hostile_connections: int = 50
    hostile_value_bytes: int = 8000
    hostile_rounds: int = 10
    state_keys: int = 10_000
    state_value_bytes: int = 300
    state_clients: int = 1_000
    #: How long the live stream runs, alone and beside the snapshots.
    state_live_seconds: float = 30.0
    #: The store's memory once more, at a size where fixed costs weigh little.
    state_memory_keys: int = 100_000
    #: Extra settings of the policy runs (quick: small buffers, so that a few seconds fill them).
    policy_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def quick(cls) -> Scale:
        return cls(
            fanout_clients=20, fanout_messages=300, fanout_window=30.0, latency_clients=20,
            latency_rate=50.0, latency_seconds=2.0, isolation_seconds=10.0, samplers=5,
            workers_rate=50.0,
            isolation_buffer=16,
            idle_connections=200, handshake_concurrency=50, handshake_count=100,
            handshake_rounds=1, transport_rounds=1,
            replay_clients=3, replay_messages=2_000, replay_seconds=4.0,
            hostile_connections=3, hostile_rounds=15,
            policy_clients=30, policy_slow=4, policy_keys=10, policy_seconds=3.0,
            policy_env={"WS_CLIENT_BUFFER": "16", "WS_SEND_BUFFER_BYTES": "4096"},
            state_keys=500, state_clients=20, state_live_seconds=4.0,
            state_memory_keys=2_000,
        )  # fmt: skip


@dataclass
class Result:
    scenario: str
    figures: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)
    #: (share of samples, function) of the server's hottest functions, with --profile.
    profile: list[tuple[float, str]] = field(default_factory=list)


def top_functions(collapsed: Path, count: int = 15) -> list[tuple[float, str]]:
    """Self time per function from py-spy's collapsed stacks ("a;b;c 12" lines)."""
    own: dict[str, int] = {}
    samples = 0
    if not collapsed.exists():
        return []
    for line in collapsed.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        leaf = stack.rsplit(";", 1)[-1]
        own[leaf] = own.get(leaf, 0) + int(n)
        samples += int(n)
    ranked = sorted(own.items(), key=lambda kv: -kv[1])[:count]
    return [(n / samples, name) for name, n in ranked] if samples else []


def _tree(pid: int) -> list[int]:
    """``pid`` and its children (the workers of a ``WS_WORKERS`` server)."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            children += [int(c) for c in (task / "children").read_text().split()]
    return [pid, *children]


def _cpu_seconds(pid: int) -> float:
    """CPU seconds of the server process and its workers."""
    ticks = 0
    for one in _tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _rss_bytes(pid: int) -> int:
    """Resident bytes of the server process and its workers."""
    total = 0
    for one in _tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{one}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def machine() -> dict[str, str]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    versions = {name: version(name) for name in ("websockets", "aiokafka", "uvloop", "orjson")}
    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "kernel": platform.release(),
        **versions,
    }


#: Given a topic: the server's settings and the value encoder of a record format.
Form = Callable[[str], tuple[dict[str, str], Callable[[int], bytes]]]
#: The record of the formats scenario, as Avro (the JSON of the other scenarios).
FORMATS_SCHEMA = (
    '{"type":"record","name":"Bench","fields":'
    '[{"name":"seq","type":"long"},{"name":"pad","type":"string"}]}'
)


class Rig:
    """A broker, servers and load clients for the scenarios, and the figures they print."""

    def __init__(self, broker: Broker, scale: Scale, workdir: Path, profile: bool = False) -> None:
        self.broker = broker
        self.scale = scale
        self.workdir = workdir
        self.profile = profile
        self.token = mint_token(SECRET, "bench", ttl=24 * 3600)
        self.settings = load_settings(
            {"WS_KAFKA_BROKERS": broker.bootstrap}, environ={}, env_file=None
        )

    # -- plumbing --------------------------------------------------------------

    @contextmanager
    def server(
        self, topic: str, env: dict[str, str], baseline: bool = False
    ) -> Iterator[ServerProcess]:
        server = ServerProcess(
            self.broker.bootstrap, [topic], self.workdir,
            {"WS_LOG_LEVEL": "INFO", "WS_PING_INTERVAL_SECONDS": "0",
             "WS_KAFKA_METADATA_REFRESH_SECONDS": "0.5", "PYTHONPATH": str(ROOT), **env},
            secret=SECRET,
            command=[sys.executable, "-m", "wsrt.bench.baseline"] if baseline else None,
        )  # fmt: skip
        server.start()
        # Every worker positioned before the clients come (/healthz is the node's).
        if env.get("WS_WORKERS", "1") != "1" and not wait_healthy(server.http, 60):
            raise RuntimeError("the workers did not become ready within 60 s")
        try:
            yield server
        finally:
            server.stop()

    @contextmanager
    def client(self, params: dict[str, Any]) -> Iterator[subprocess.Popen[str]]:
        process = subprocess.Popen(
            [sys.executable, "-m", "wsrt.bench.client", json.dumps(params)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
        )  # fmt: skip
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()

    @staticmethod
    def line(process: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
        """The next JSON line of the client (it prints two: ready, then result)."""
        box: list[str] = []
        assert process.stdout is not None
        reader = threading.Thread(target=lambda: box.append(process.stdout.readline()))  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout)
        if not box or not box[0]:
            raise RuntimeError("the load client did not answer in time (or died)")
        obj: dict[str, Any] = json.loads(box[0])
        return obj

    def metrics(self, server: ServerProcess) -> dict[Any, float]:
        return scrape(server.http)

    def preload(
        self, topic: str, count: int, value: bytes = VALUE, keys: list[bytes] | None = None
    ) -> float:
        """Produce ``count`` messages as fast as the producer goes (over ``keys``); messages/s."""
        from aiokafka import AIOKafkaProducer

        async def run() -> float:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.broker.bootstrap, linger_ms=20,
                max_batch_size=512 * 1024, acks=1,
            )  # fmt: skip
            await producer.start()
            started = time.perf_counter()
            try:
                pending = []
                for n in range(count):
                    key = keys[n % len(keys)] if keys else None
                    pending.append(await producer.send(topic, value % n, key=key, partition=0))
                    if len(pending) >= 5000:
                        await asyncio.gather(*pending)
                        pending.clear()
                await asyncio.gather(*pending)
            finally:
                await producer.stop()
            return count / (time.perf_counter() - started)

        return asyncio.run(run())

    def produce_one(self, topic: str) -> float:
        """Produce one record with a producer already connected; when it was sent (epoch s)."""
        from aiokafka import AIOKafkaProducer

        async def run() -> float:
            producer = AIOKafkaProducer(bootstrap_servers=self.broker.bootstrap, linger_ms=0)
            await producer.start()
            try:
                await producer.partitions_for(topic)  # metadata before the clock starts
                sent = time.time()
                await producer.send_and_wait(topic, VALUE % 0)
                return sent
            finally:
                await producer.stop()

        return asyncio.run(run())

    def paced(
        self,
        topic: str,
        count: int,
        rate: float,
        keys: int = 8,
        value: bytes | None = None,
        encode: Callable[[int], bytes] | None = None,
    ) -> None:
        """Produce ``count`` messages over ``keys`` keys at ``rate`` per second.

        The record timestamp is the produce time; clients measure their delay
        from it. The default value of about 2 KB makes a stalled client's
        buffers fill within seconds; ``value`` (with a ``%d`` for the sequence
        number) replaces it; ``encode`` makes each value from the sequence number.
        """
        from wsrt.tools.feed import producer, publish

        template = value or b'{"seq":%d,"pad":"' + b"x" * 1800 + b'"}'

        async def messages() -> AsyncIterator[tuple[str, bytes | None, bytes]]:
            for n in range(count):
                yield topic, b"k%d" % (n % keys), encode(n) if encode else template % n

        async def run() -> None:
            # No linger: the record timestamp is taken at send(), and waiting
            # to fill a batch would count in every client's delay.
            kafka = producer(self.settings, linger_ms=0)
            await kafka.start()
            try:
                await publish(kafka, messages(), rate)
            finally:
                await kafka.stop()

        asyncio.run(run())

    def new_topic(self, name: str, create: bool = True) -> str:
        topic = f"bench-{name}-{uuid.uuid4().hex[:6]}"
        if create:
            # The broker stamps each record when it appends it (the latency budget's
            # first stage); the embedded broker keeps the producer's time.
            configs = {"message.timestamp.type": "LogAppendTime"} if self.log_append else {}
            asyncio.run(create_topics(self.broker.bootstrap, {topic: 1}, configs))
        return topic

    @property
    def log_append(self) -> bool:
        return self.broker.kind == "apache"

    # -- scenarios -------------------------------------------------------------


class ThroughputScenarios(Rig):
    """Fan-out and latency: how fast, how late."""

    def fanout(self, baseline: bool, policy: str | None = None) -> Result:
        """N clients on one channel; the topic is filled after they connected.

        ``policy``: the topic's slow-consumer policy, named in the scenario.
        """
        s = self.scale
        name = "fan-out, websockets.broadcast() per message" if baseline else "fan-out, wsrt hub"
        if policy is not None:
            name = f"policies: fan-out, every client keeps up, {policy} topic"
        topic = self.new_topic("fanout", create=False)
        env = {"WS_CLIENT_BUFFER": "1000000"}  # measure the server, not slow-consumer drops
        if policy is not None:
            env["WS_TOPIC_POLICIES"] = f"{topic}={policy}"
        with self.server(topic, env, baseline=baseline) as server:
            samplers = min(s.samplers, s.fanout_clients)
            params = {
                "mode": "stream", "url": server.url, "token": self.token, "channel": topic,
                "counters": s.fanout_clients - samplers, "samplers": samplers,
                "messages": s.fanout_messages, "window": s.fanout_window,
                "timeout": s.fanout_window + 60,
            }  # fmt: skip
            with self.client(params) as client:
                ready = self.line(client, 120)
                cpu = CpuSampler(server.pid)
                # The topic appears after the clients subscribed: the server reads it
                # from its beginning, a backlog it delivers as fast as it can.
                asyncio.run(create_topics(self.broker.bootstrap, {topic: 1}))
                spy = self._profiler(server.pid, s.fanout_window) if self.profile else None
                produced_per_s = self.preload(topic, s.fanout_messages)
                result = self.line(client, 400)
                cpu.stop()
        outcome = self._stream_result(name, ready, result, cpu, produced_per_s, s.fanout_messages)
        if spy is not None:
            spy.wait(60)
            outcome.profile = top_functions(self._spy_output)
        return outcome

    def _profiler(self, pid: int, seconds: float) -> subprocess.Popen[bytes]:
        """py-spy on the server for ``seconds`` (collapsed stacks)."""
        import shutil

        binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        spy = subprocess.Popen(
            [binary, "record", "--pid", str(pid), "--format", "raw", "--rate", "250",
             "--duration", str(max(1, int(seconds))), "--nonblocking",
             "--output", str(self.workdir / "profile.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self._spy_output = self.workdir / "profile.txt"
        return spy

    def _stream_result(
        self,
        name: str,
        ready: dict[str, Any],
        result: dict[str, Any],
        cpu: CpuSampler,
        produced_per_s: float,
        expected: int,
    ) -> Result:
        rate, window = steady_rate(result["series"])
        checks = {
            "all upgraded": ready["upgraded"] == result["connections"] - ready_samplers(result),
            "sample in order, no gap": result["sample_gaps"] == 0
            and result["sample_out_of_order"] == 0,
            "no client dropped": result["closed_early"] == 0,
        }
        if result["ended"] != "window":  # a run cut by its time bound is not complete
            checks["every frame delivered"] = result["per_client_min"] == expected
        return Result(
            name,
            {
                "clients": result["connections"],
                "frames/s": rate,
                "kafka msg/s": rate / max(1, result["connections"]),
                "server CPU": cpu.percent(window),
                "window s": window[1] - window[0] if window else 0.0,
                "frames": result["frames"],
                "ended by": result["ended"],
                "produce msg/s": produced_per_s,
            },
            checks,
        )

    def latency(
        self,
        stalled: bool,
        workers: int = 1,
        rate: float | None = None,
        name: str | None = None,
        form: Form | None = None,
        load: Callable[[str], dict[str, Any]] | None = None,
        keep_up: bool = True,
    ) -> Result:
        """N clients, a steady rate from a separate producer; delay produce → receipt.
        ``workers``: WS_WORKERS of the server; ``rate``: messages/s (default the scale's);
        ``form``: given the topic, the server's settings and the value encoder of a format;
        ``load``: given the topic, more parameters of the load client; ``keep_up``: whether
        every frame reaching every client in the window is a check (else a figure)."""
        s = self.scale
        seconds = s.isolation_seconds if stalled else s.latency_seconds
        name = name or ("isolation: 1 stalled client" if stalled else "latency")
        rate = rate or s.latency_rate
        topic = self.new_topic("latency")
        count = int(rate * seconds)
        every = max(1, count // PROBES)  # about PROBES records carry the latency budget
        env = {
            "WS_CLIENT_BUFFER": str(s.isolation_buffer), "WS_WORKERS": str(workers),
            "WS_LATENCY_SAMPLE_EVERY": str(every),
        }  # fmt: skip
        settings, encode = form(topic) if form is not None else ({}, None)
        env.update(settings)
        with self.server(topic, env) as server:
            samplers = min(s.samplers, s.latency_clients - 1)
            params = {
                "mode": "stream", "url": server.url, "token": self.token, "channel": topic,
                "counters": s.latency_clients - samplers - (1 if stalled else 0),
                "samplers": samplers, "messages": count, "window": seconds + 30,
                "timeout": seconds + 60, "stalled": stalled, "probe_every": every,
                **(load(topic) if load is not None else {}),
            }  # fmt: skip
            with self.client(params) as client:
                ready = self.line(client, 120)
                cpu = CpuSampler(server.pid)
                spy = self._profiler(server.pid, seconds) if self.profile else None
                self.paced(topic, count, rate, encode=encode)
                result = self.line(client, seconds + 120)
                cpu.stop()
                after = self.metrics(server)
                stages = [e for e in server.events if e.get("event") == "latency_sample"]
        if spy is not None:
            spy.wait(60)
        figures = _stream_figures(result, cpu, after, rate, stalled)
        figures.update(budget(stages, result["probes"], self.log_append))
        upgraded = ready["upgraded"] + samplers
        if not keep_up:
            figures["frames reached the slowest client"] = f"{result['per_client_min']:,}/{count:,}"
        checks = {
            "all upgraded": upgraded == result["connections"] + (1 if stalled else 0),
            "every frame delivered": result["per_client_min"] == count or not keep_up,
            "sample in order, no gap": result["sample_gaps"] == 0
            and result["sample_out_of_order"] == 0,
        }
        if stalled:
            drops = total(after, "wsrt_slow_consumer_disconnects_total")
            figures["slow-consumer drops"] = drops
            figures["stalled socket gone by the end"] = result["stalled_closed"]
            checks["stalled client dropped (1008), alone"] = drops == 1
        outcome = Result(name, figures, checks)
        if spy is not None:
            outcome.profile = top_functions(self._spy_output)
        return outcome

    def formats(self) -> list[Result]:
        """The latency scenario with the same data as JSON and as Avro (Apicurio Registry)."""
        from wsrt.brokers.registry import ApicurioRegistry
        from wsrt.kafka.registry import Registry
        from wsrt.schemas import avro_encoder, framed

        pad = "x" * 1800
        encoder = avro_encoder(FORMATS_SCHEMA)
        with ApicurioRegistry(self.workdir / "registry") as registry:

            def avro(topic: str) -> tuple[dict[str, str], Callable[[int], bytes]]:
                ident = Registry(registry.url).register(f"{topic}-value", FORMATS_SCHEMA, "AVRO")
                env = {"WS_TOPIC_FORMATS": f"{topic}=avro", "WS_SCHEMA_REGISTRY_URL": registry.url}
                return env, lambda n: framed(ident, encoder({"seq": n, "pad": pad}))

            plain = self.latency(False, name="formats: json")
            decoded = self.latency(False, name="formats: avro (same data)", form=avro)
        for figure in ("server CPU", "p99 ms"):
            mine, base = decoded.figures.get(figure), plain.figures.get(figure)
            if isinstance(mine, int | float) and isinstance(base, int | float) and base:
                decoded.figures[f"{figure}, avro / json"] = round(mine / base, 2)
        return [plain, decoded]

    def filters(self) -> list[Result]:
        """The latency scenario four times with the same betting-line records: plain; with
        100 distinct filters that read ``data`` (each passing every record, so the same
        frames are delivered); with deflate (each frame compressed once); and with each
        client's frames compressed for it alone."""
        import json

        def line(n: int) -> bytes:
            odds = [round(1.5 + ((n * 7 + i * 13) % 40) / 20, 2) for i in range(3)]
            return json.dumps({
                "seq": n, "event": f"EVT-{n % 97}", "market": ("moneyline", "spread")[n % 2],
                "status": "open", "selections": [
                    {"name": name, "odds": o, "line": (n % 9) - 4}
                    for name, o in zip(("home", "draw", "away"), odds, strict=True)
                ], "updated": 1_765_000_000_000 + n * 10,
            }).encode()  # fmt: skip

        def plain(topic: str) -> tuple[dict[str, str], Callable[[int], bytes]]:
            return {}, line

        def deflate(topic: str) -> tuple[dict[str, str], Callable[[int], bytes]]:
            return {"WS_COMPRESSION": "deflate"}, line

        def deflate_each(topic: str) -> tuple[dict[str, str], Callable[[int], bytes]]:
            return {"WS_COMPRESSION": "deflate", "WSRT_BENCH_DEFLATE_PER_CLIENT": "1"}, line

        def filtered(topic: str) -> dict[str, Any]:
            asks = [
                {"type": "subscribe", "channel": topic, "filter": {"all": [
                    {"field": "data.seq", "gte": 0}, {"field": "data.market", "ne": f"none-{i}"},
                ]}}
                for i in range(100)
            ]  # fmt: skip
            return {"subscribes": [json.dumps(a) for a in asks]}

        runs = [
            self.latency(False, name="filters: none", form=plain),
            self.latency(False, name="filters: 100 distinct", form=plain, load=filtered),
            self.latency(False, name="deflate: once per frame", form=deflate,
                         load=lambda topic: {"deflate": True}),
            self.latency(False, name="deflate: per client", form=deflate_each,
                         load=lambda topic: {"deflate": True}, keep_up=False),
        ]  # fmt: skip
        base, narrowed, once, each = runs
        _ratio(narrowed, base, "server CPU µs/frame", "filtered / none")
        _ratio(narrowed, base, "p99 ms", "filtered / none")
        _ratio(once, base, "bytes/frame", "deflate / none")
        _ratio(once, base, "server CPU µs/frame", "deflate / none")
        _ratio(each, once, "server CPU µs/frame", "per client / once")
        return runs

    def workers(self) -> list[Result]:
        """One server process, then two (WS_WORKERS=2), at a rate that saturates one."""
        s = self.scale
        return [
            self.latency(False, workers, s.workers_rate, f"workers: {workers} at saturation")
            for workers in (1, 2)
        ]


@dataclass
class LiveRun:
    result: Result
    #: (receipt time, delay) of the sampled live frames.
    delays: list[list[float]]
    #: When production started (epoch s).
    t0: float
    #: The second load client's result, if there was one.
    other: dict[str, Any] | None
    #: The server's metrics after the run.
    after: dict[Any, float]
    #: (receipt time, ms from the fetch to the last client's socket written) per probe.
    in_server: list[tuple[float, float]] = field(default_factory=list)


class ReplayScenarios(ThroughputScenarios):
    """Replays beside the live stream, and a client that stops reading mid-replay."""

    def replay(self) -> list[Result]:
        """Live clients at a steady rate, without and then with replays of history beside them.

        The topic holds ``replay_messages`` records first; each run gets a fresh
        server (live from the end). The live delay is reported over the whole
        run and over the seconds the replays took (for the run without, the
        same seconds after the start of production).
        """
        s = self.scale
        topic = self.new_topic("replay")
        self.preload(topic, s.replay_messages)
        replays = {"mode": "replay", "clients": s.replay_clients, "rewind": s.replay_messages}
        alone, beside = self._live_pair(
            topic, f"{s.replay_clients} replays", "replays", s.replay_seconds, replays, {}
        )
        replayed, after = beside.other, beside.after
        assert replayed is not None
        beside.result.figures.update({
            "replays": replayed["clients"], "messages each": s.replay_messages,
            "replays took s": replayed["ended"] - replayed["started"],
            "replay msg/s per client (median)": replayed["rate_median"],
            "messages replayed": total(after, "wsrt_replay_messages_total"),
        })  # fmt: skip
        beside.result.checks["every replay complete, no gap"] = (
            replayed["finished"] == replayed["clients"] and replayed["gaps"] == 0
        )
        return [alone, beside.result, self._one_replay(topic), self._stalled_replay(topic)]

    def _live_pair(
        self,
        topic: str,
        label: str,
        what: str,
        seconds: float,
        beside: dict[str, Any],
        env: dict[str, str],
        value: bytes | None = None,
    ) -> tuple[Result, LiveRun]:
        """The live stream alone, then beside a second load client (``beside``: its params).

        Each run gets a fresh server (live from the end). Reported: the live delay
        over the whole run and over the seconds the second client's work took
        (for the run alone, the same seconds after the start of production).
        """
        alone = self._live_run(topic, "live, no " + what, seconds, env, value=value)
        with_it = self._live_run(topic, f"live beside {label}", seconds, env, beside, value)
        done = with_it.other
        assert done is not None
        start, end = done["started"] - with_it.t0, done["ended"] - with_it.t0
        same = [d for t, d in alone.delays if start <= t - alone.t0 <= end]
        inside = [d for t, d in with_it.delays if done["started"] <= t <= done["ended"]]
        name = f"live p99 ms in the {what}' seconds"
        alone.result.figures[name] = percentile(same, 0.99)
        with_it.result.figures[name] = percentile(inside, 0.99)
        # The server's share alone, free of the load clients' share of the same two cores.
        name = f"server's part (fetch → last socket written) p99 ms, {what}' seconds"
        same = [ms for t, ms in alone.in_server if start <= t - alone.t0 <= end]
        inside = [ms for t, ms in with_it.in_server if done["started"] <= t <= done["ended"]]
        alone.result.figures[name] = percentile(same, 0.99)
        with_it.result.figures[name] = percentile(inside, 0.99)
        return alone.result, with_it

    def _one_replay(self, topic: str) -> Result:
        """One client replaying alone: at the default WS_REPLAY_RATE, and paced by it alone."""
        s = self.scale
        figures: dict[str, Any] = {"messages": s.replay_messages}
        checks = {}
        for label, env in (("default WS_REPLAY_RATE", {}),
                           ("no rate limit", {"WS_REPLAY_RATE": "100000000"})):  # fmt: skip
            with self.server(topic, env) as server:
                params = {
                    "mode": "replay", "url": server.url, "token": self.token, "channel": topic,
                    "clients": 1, "rewind": s.replay_messages, "timeout": 300,
                }  # fmt: skip
                with self.client(params) as client:
                    self.line(client, 60)
                    result = self.line(client, 320)
            figures[f"msg/s, {label}"] = result["rate_median"]
            checks[f"complete, no gap ({label})"] = result["finished"] == 1 and not result["gaps"]
        return Result("one replay alone", figures, checks)

    def _live_run(
        self,
        topic: str,
        name: str,
        seconds: float,
        env: dict[str, str],
        beside: dict[str, Any] | None = None,
        value: bytes | None = None,
    ) -> LiveRun:
        """One run of the live stream, beside a second load client (``beside``: its params)."""
        s = self.scale
        count = int(s.latency_rate * seconds)
        every = str(max(1, int(s.latency_rate // 10)))  # ten probe records a second
        with self.server(topic, {**env, "WS_LATENCY_SAMPLE_EVERY": every}) as server:
            server.wait_ready()
            samplers = min(s.samplers, s.latency_clients)
            params = {
                "mode": "stream", "url": server.url, "token": self.token, "channel": topic,
                "counters": s.latency_clients - samplers, "samplers": samplers,
                "messages": count, "window": seconds + 30, "timeout": seconds + 60, "raw": True,
                "probe_every": int(every),
            }  # fmt: skip
            second = None if beside is None else {
                "url": server.url, "token": self.token, "channel": topic, "timeout": seconds + 120,
                **beside,
            }  # fmt: skip
            with self.client(params) as client, contextlib.ExitStack() as stack:
                self.line(client, 120)
                cpu = CpuSampler(server.pid)
                t0 = time.time()
                other = stack.enter_context(self.client(second)) if second else None
                if other is not None:
                    self.line(other, 120)  # connected; its work has started
                self.paced(topic, count, s.latency_rate, value=value)
                done = self.line(other, seconds + 180) if other else None
                result = self.line(client, seconds + 120)
                cpu.stop()
                after = self.metrics(server)
                stages = {
                    (e["partition"], e["offset"]): e["written_ms"] - e["fetched_ms"]
                    for e in server.events if e.get("event") == "latency_sample"
                }  # fmt: skip
        in_server = [
            (received / 1000, stages[(p, o)])
            for p, o, _, received in result["probes"]
            if (p, o) in stages
        ]
        _, run_window = steady_rate(result["series"])
        delays = result["delays"]
        figures: dict[str, Any] = {
            "clients": result["connections"], "msg/s": s.latency_rate,
            "live p50 ms": percentile([d for _, d in delays], 0.5),
            "live p99 ms": percentile([d for _, d in delays], 0.99),
            "server CPU": cpu.percent(run_window),
        }  # fmt: skip
        checks = {
            "every live frame delivered": result["per_client_min"] == count,
            "sample in order, no gap": result["sample_gaps"] == 0
            and result["sample_out_of_order"] == 0,
        }
        return LiveRun(Result(name, figures, checks), delays, t0, done, after, in_server)

    def _stalled_replay(self, topic: str) -> Result:
        """A client that asks for history and reads nothing: what the server holds for it."""
        s = self.scale
        with self.server(topic, {}) as server:
            before = _rss_bytes(server.pid)
            params = {
                "mode": "replay", "url": server.url, "token": self.token, "channel": topic,
                "clients": 1, "rewind": s.replay_messages, "timeout": 60, "stall": True,
            }  # fmt: skip
            with self.client(params) as client:
                self.line(client, 60)
                # The replay stops moving once the client's buffers are full.
                replayed, still = -1.0, 0
                while still < 4:
                    time.sleep(0.5)  # sampling a metric, not synchronisation
                    now = total(self.metrics(server), "wsrt_replay_messages_total")
                    still, replayed = (still + 1 if now == replayed else 0), now
                held = _rss_bytes(server.pid)
                scrape = self.metrics(server)
                running = total(scrape, "wsrt_replays_running")
                ended = total(scrape, "wsrt_replays_completed_total") + total(
                    scrape, "wsrt_replays_cancelled_total"
                )
                assert client.stdin is not None
                client.stdin.close()
                self.line(client, 30)
        return Result(
            "replay to a client that stops reading",
            {
                "history asked": s.replay_messages,
                "delivered before it stalled": replayed,
                "server RSS growth MB": (held - before) / 2**20,
            },
            # Paused with its slot given back: a client that stops reading holds none.
            {"paused, slot free": replayed < s.replay_messages and running == 0 and ended == 0},
        )


class StateScenarios(ReplayScenarios):
    """State topics: a snapshot to one client, to many at once, and what the store costs."""

    def state(self) -> list[Result]:
        """A store of ``state_keys`` keys: what it costs, a snapshot to one client and to
        ``state_clients`` at once, and the live stream beside those snapshots."""
        s = self.scale
        topic = self.new_topic("state")
        value = b'{"pad":"' + b"x" * (s.state_value_bytes - 16) + b'","n":%d}'
        keys = [b"key-%05d" % n for n in range(s.state_keys)]
        self.preload(topic, s.state_keys, value, keys)
        held = len(value % 0) * s.state_keys
        figures: dict[str, Any] = {"keys": s.state_keys, "value bytes held (MB)": held / 2**20}
        with self.server(topic, {}) as plain:
            plain.wait_ready()
            without = _rss_bytes(plain.pid)
        env = {"WS_STATE_TOPICS": topic}
        with self.server(topic, env) as server:
            loaded = server.wait_for("state_loaded")
            server.wait_ready()
            figures["load ms"] = loaded["duration_ms"]
            figures["store bytes / value bytes (accounted)"] = loaded["bytes"] / held
            figures["RSS growth / value bytes"] = (_rss_bytes(server.pid) - without) / held
            one = self._snapshots(server, topic, 1)
            many = self._snapshots(server, topic, s.state_clients)
        figures["one client: snapshot ms"] = one["ms"].get("p50")
        figures[f"{s.state_clients} clients at once: all done s"] = many["all_s"]
        figures[f"{s.state_clients} clients at once: p50 / max ms"] = (
            f"{many['ms'].get('p50', 0):.0f} / {many['ms'].get('max', 0):.0f}"
        )
        figures.update(self._store_cost(s.state_memory_keys, value))
        checks = {
            "every client got every key": many["finished"] == s.state_clients
            and many["keys_min"] == s.state_keys
            and one["keys_min"] == s.state_keys,
        }
        # The live stream updates the state topic with values of the same size (8 new keys).
        snapshots = {"mode": "snapshot", "clients": s.state_clients}
        label = f"{s.state_clients} snapshots of {s.state_keys} keys"
        alone, beside = self._live_pair(
            topic, label, "snapshots", s.state_live_seconds, snapshots, env, value
        )
        done = beside.other
        assert done is not None
        beside.result.figures["snapshots took s"] = done["all_s"]
        beside.result.checks["every snapshot has every key"] = (
            done["finished"] == s.state_clients and done["keys_min"] >= s.state_keys
        )
        return [Result("state on subscribe", figures, checks), alone, beside.result]

    def _store_cost(self, count: int, value: bytes) -> dict[str, float]:
        """A store of ``count`` keys against the value bytes it holds: accounted, and the
        server's RSS growth (the fixed costs of loading weigh less than at 10,000 keys)."""
        topic = self.new_topic("state-memory")
        self.preload(topic, count, value, [b"key-%06d" % n for n in range(count)])
        held = len(value % 0) * count
        with self.server(topic, {}) as plain:
            plain.wait_ready()
            without = _rss_bytes(plain.pid)
        with self.server(topic, {"WS_STATE_TOPICS": topic}) as server:
            loaded = server.wait_for("state_loaded")
            server.wait_ready()
            grown = _rss_bytes(server.pid) - without
        return {
            f"{count:,} keys: store bytes / value bytes (accounted)": loaded["bytes"] / held,
            f"{count:,} keys: RSS growth / value bytes": grown / held,
        }

    def _snapshots(self, server: ServerProcess, topic: str, clients: int) -> dict[str, Any]:
        params = {
            "mode": "snapshot", "url": server.url, "token": self.token, "channel": topic,
            "clients": clients, "timeout": 120,
        }  # fmt: skip
        with self.client(params) as client:
            self.line(client, 120)
            return self.line(client, 180)


class Bench(StateScenarios):
    """Every scenario: also the slow-consumer policies, hostile clients and idle connections."""

    def policies(self) -> list[Result]:
        """An order book of ``policy_keys`` keys at ``policy_rate`` msg/s to ``policy_clients``.

        First the fan-out of a backlog to clients that all keep up, per policy.
        Then the same others (``policy_clients - policy_slow``) without and,
        per policy, beside ``policy_slow`` clients that read at a tenth of the
        rate. Reported: the others' delay against the runs without slow
        clients, and what the slow ones received and how old it was.
        """
        s = self.scale
        count = int(s.policy_rate * s.policy_seconds)
        # What a policy costs the clients that keep up: the fan-out of a backlog.
        results = [self.fanout(False, policy) for policy in ("disconnect", "conflate", "drop")]
        small = {"WS_SEND_BUFFER_BYTES": "16384"}
        # The others alone first and last: the machine drifts within a run.
        runs: list[tuple[str | None, dict[str, str]]] = [
            (None, {}), ("disconnect", {}), ("conflate", {}), ("drop", {}),
            ("conflate", small), ("drop", small), (None, {}),
        ]  # fmt: skip
        alone: list[float] = []
        beside: list[Result] = []
        for n, (policy, extra) in enumerate(runs):
            slow = s.policy_slow if policy else 0
            result = self._policy_run(policy, {**s.policy_env, **extra}, slow, count)
            delay, seen = result["delay_ms"], result["slow"]
            figures: dict[str, Any] = {
                "clients": result["connections"] + slow, "slow clients": slow,
                "msg/s": s.policy_rate, "keys": s.policy_keys,
                "others p50 ms": delay.get("p50"), "others p99 ms": delay.get("p99"),
                "server CPU": result["cpu"],
            }  # fmt: skip
            checks = {
                "others: every frame delivered": result["per_client_min"] == count,
                "others: sample in order, no gap": result["sample_gaps"] == 0
                and result["sample_out_of_order"] == 0,
            }
            if policy is None:
                if delay.get("p99"):
                    alone.append(delay["p99"])
                when = "first" if n == 0 else "last"
                results.append(Result(f"policies: the others alone, {when}", figures, checks))
                continue
            median = len(seen["messages"]) // 2
            figures.update({
                "slow: read msg/s while slow (median)": seen["read_per_s"],
                "slow: messages received (median)": seen["messages"][median],
                "slow: not delivered, per notices (median)": seen["dropped"][median],
                "slow: notices (median)": seen["notices"][median],
                "slow: age of what they read while slow, p50 s": seen["age_s"].get("p50"),
                "slow: age of what they read while slow, p99 s": seen["age_s"].get("p99"),
                "slow: closed 1008": seen["closed"],
            })  # fmt: skip
            if policy == "disconnect":
                checks["slow: all closed 1008, nobody else"] = (
                    seen["closed"] == slow and result["closed_early"] == 0
                )
            else:
                checks["slow: none closed"] = seen["closed"] == 0
                checks["slow: every message received or in a notice"] = seen["accounted"] == slow
            settings = "".join(f", {k}={v}" for k, v in extra.items())
            outcome = Result(f"policies: {policy}, {slow} slow clients{settings}", figures, checks)
            beside.append(outcome)
            results.append(outcome)
        for outcome in beside:  # against the mean of the two runs without slow clients
            p99 = outcome.figures["others p99 ms"]
            outcome.figures["others p99 / alone (mean of both)"] = (
                p99 / (sum(alone) / len(alone)) if p99 and alone else None
            )
        return results

    def _policy_run(
        self, policy: str | None, env: dict[str, str], slow: int, count: int
    ) -> dict[str, Any]:
        """One run of the policy scenario: the load client's result, with the server's CPU."""
        s = self.scale
        topic = self.new_topic("policy")
        env = {**env, "WS_TOPIC_POLICIES": f"{topic}={policy or 'disconnect'}"}
        with self.server(topic, env) as server:
            # The same others in every run: those beside the slow ones, or alone.
            others = s.policy_clients - s.policy_slow
            samplers = min(s.samplers, others)
            params = {
                "mode": "stream", "url": server.url, "token": self.token, "channel": topic,
                "counters": others - samplers, "samplers": samplers,
                "slow": slow, "slow_rate": s.policy_rate / 10, "messages": count,
                "window": s.policy_seconds + 30, "timeout": s.policy_seconds + 60,
                "drain_timeout": 60,
            }  # fmt: skip
            with self.client(params) as client:
                self.line(client, 120)
                cpu = CpuSampler(server.pid)
                self.paced(topic, count, s.policy_rate, s.policy_keys, VALUE)
                result = self.line(client, s.policy_seconds + 180)
                cpu.stop()
        _, window = steady_rate(result["series"])
        result["cpu"] = cpu.percent(window)
        return result

    def hostile(self) -> Result:
        """Connections at every limit at once: what one client can make the server hold.

        Each one subscribes ``WS_MAX_SUBSCRIPTIONS`` keyed channels whose names
        are ``WS_MAX_CHANNEL_BYTES`` long, then reads nothing while records of
        all those keys arrive: on a ``drop`` topic its queue stays full at
        ``WS_CLIENT_BUFFER`` (a ``disconnect`` topic would close it there).
        Keyed routes join frames per connection, so nothing in its queue is
        shared with another client: the worst case.
        """
        s = self.scale
        d = self.settings
        topic = self.new_topic("hostile")
        room = d.max_channel_bytes - len(topic) - 1
        keys = [f"{n:03d}".ljust(room, "k") for n in range(d.max_subscriptions)]
        value = b'{"seq":%d,"pad":"' + b"x" * (s.hostile_value_bytes - 30) + b'"}'
        count = d.max_subscriptions * s.hostile_rounds
        # WS_CONTROL_RATE only makes a client take 5 s for its 100 subscribes.
        env = {"WS_TOPIC_POLICIES": f"{topic}=drop", "WS_CONTROL_RATE": "1000"}
        with self.server(topic, env) as server:
            before = _rss_bytes(server.pid)
            params = {
                "mode": "hoard", "url": server.url, "token": self.token,
                "connections": s.hostile_connections,
                "subscribes": [f"{topic}:{k}" for k in keys],
            }  # fmt: skip
            with self.client(params) as client:
                ready = self.line(client, 120)
                want = s.hostile_connections * d.max_subscriptions
                held = self._sample_until(
                    server, lambda m: _sample(m, "wsrt_subscriptions", topic) >= want
                )
                subscribed = _rss_bytes(server.pid)
                self.preload(topic, count, value, [k.encode() for k in keys])
                after = self._sample_until(
                    server, lambda m: _sample(m, "wsrt_kafka_messages_total", topic) >= count
                )
                full = _rss_bytes(server.pid)
                assert client.stdin is not None
                client.stdin.close()
                result = self.line(client, 60)
        n = max(1, ready["upgraded"])
        frame = len(
            record_frame(topic, keys[0].encode(), 0, count, int(time.time() * 1000), value % count)
        )
        return Result(
            "hostile: connections at every limit",
            {
                "connections": ready["upgraded"],
                "subscriptions each": d.max_subscriptions,
                "channel bytes": d.max_channel_bytes,
                "record bytes": len(value % 0),
                "queue each (WS_CLIENT_BUFFER)": d.client_buffer,
                "RSS per conn, subscribed KB": (subscribed - before) / n / 1024,
                "RSS per conn, queue full KB": (full - before) / n / 1024,
                "queue alone, computed KB": d.client_buffer * frame / 1024,
            },
            {
                "all upgraded": ready["upgraded"] == s.hostile_connections,
                "every subscription held": _sample(held, "wsrt_subscriptions", topic) == want,
                "queues full: records dropped, none closed": _sample(
                    after, "wsrt_slow_consumer_messages_not_delivered_total", topic
                )
                > 0
                and result["still_open"] == s.hostile_connections,
            },
        )

    def _sample_until(
        self, server: ServerProcess, done: Any, timeout: float = 120
    ) -> dict[Any, float]:
        """Scrape /metrics until ``done(samples)``; the last samples."""
        deadline = time.monotonic() + timeout
        while True:
            samples = self.metrics(server)
            if done(samples) or time.monotonic() > deadline:
                return samples
            time.sleep(0.2)  # sampling a metric, not synchronisation

    def connections(self) -> Result:
        """Idle authenticated connections held by one server: handshakes/s, memory, and the
        time until the last of them has a live message."""
        import resource

        s = self.scale
        # Every connection is a file in the server and in the load client: as many
        # as the hard open-file limit allows, with room for everything else.
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        count = min(s.idle_connections, hard - min(2000, hard // 10))
        topic = self.new_topic("idle")
        # Idle connections as in production: with the default keepalive.
        with self.server(topic, {"WS_PING_INTERVAL_SECONDS": "20"}) as server:
            pid = server.pid
            before = _rss_bytes(pid)
            params = {
                "mode": "idle", "url": server.url, "token": self.token, "channel": topic,
                "connections": count, "concurrency": s.handshake_concurrency,
            }  # fmt: skip
            with self.client(params) as client:
                ready = self.line(client, 900)
                held = total(self.metrics(server), "wsrt_connections")
                after = _rss_bytes(pid)
                assert client.stdin is not None
                client.stdin.write("live\n")
                client.stdin.flush()
                sent = self.produce_one(topic)
                live = self.line(client, 180)
                client.stdin.close()
                result = self.line(client, 60)
        per_connection = (after - before) / max(1, ready["upgraded"])
        figures = {
            "connections": ready["upgraded"],
            "handshakes/s": ready["handshakes_per_s"],
            "RSS per conn KB": per_connection / 1024,
            "server RSS MB": after / 2**20,
            "live message: first has it, ms": (live["first"] - sent) * 1000,
            "live message: last has it, ms": (live["last"] - sent) * 1000,
        }
        if count < s.idle_connections:
            figures["asked"] = f"{s.idle_connections:,}: the open-file hard limit is {hard:,}"
        if ready["failed"]:
            figures["failed handshakes"] = f"{ready['failed']}: {'; '.join(ready['errors'])}"
        return Result(
            "idle connections",
            figures,
            {
                "all upgraded": ready["upgraded"] == count and ready["failed"] == 0,
                "server holds them all": held == count,
                "every one got the live message": live["received"] == count,
                "all still open": result["still_open"] == count,
            },
        )


def _stream_figures(
    result: dict[str, Any], cpu: CpuSampler, after: dict[Any, float], rate: float, stalled: bool
) -> dict[str, Any]:
    """The latency scenario's figures: rate, delay, CPU (also per frame), bytes per frame."""
    delay = result["delay_ms"]
    delivered, window = steady_rate(result["series"])
    figures: dict[str, Any] = {
        "clients": result["connections"] + (1 if stalled else 0),
        "frames/s": delivered, "msg/s": rate, "p50 ms": delay.get("p50"),
        "p90 ms": delay.get("p90"), "p99 ms": delay.get("p99"), "max ms": delay.get("max"),
        "server CPU": cpu.percent(window),
        "bytes/frame": round(
            total(after, "wsrt_bytes_sent_total")
            / max(1.0, total(after, "wsrt_frames_delivered_total")), 1
        ),
    }  # fmt: skip
    if isinstance(figures["server CPU"], int | float) and delivered:
        figures["server CPU µs/frame"] = round(figures["server CPU"] * 1e4 / delivered, 2)
    return figures


def _ratio(mine: Result, base: Result, figure: str, label: str) -> None:
    """Add ``figure, label`` to ``mine``: its figure over the same figure of ``base``."""
    a, b = mine.figures.get(figure), base.figures.get(figure)
    if isinstance(a, int | float) and isinstance(b, int | float) and b:
        mine.figures[f"{figure}, {label}"] = round(a / b, 2)


def _sample(samples: dict[Any, float], name: str, topic: str) -> float:
    """A metric's value for ``topic`` (any other labels summed)."""
    return sum(v for (n, labels), v in samples.items() if n == name and ("topic", topic) in labels)


def ready_samplers(result: dict[str, Any]) -> int:
    return len(result["sample_received"])


def steady_rate(series: list[list[float]]) -> tuple[float, tuple[float, float] | None]:
    """Frames per second between the first and the last progress of a run."""
    moving = [(t, n) for t, n in series if n > 0]
    if len(moving) < 2:
        return 0.0, None
    last_n = moving[-1][1]
    end = next(t for t, n in moving if n == last_n)
    start_t, start_n = moving[0]
    if end <= start_t:
        return 0.0, None
    return (last_n - start_n) / (end - start_t), (start_t, end)


class CpuSampler:
    """Server CPU seconds over time, read from /proc every 0.25 s in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.time(), _cpu_seconds(self.pid)))
            except OSError:
                return
            self._stop.wait(0.25)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def percent(self, window: tuple[float, float] | None) -> float | None:
        if window is None:
            return None
        inside = [(t, c) for t, c in self.samples if window[0] <= t <= window[1]]
        if len(inside) < 2:
            return None
        (t0, c0), (t1, c1) = inside[0], inside[-1]
        return 100 * (c1 - c0) / (t1 - t0) if t1 > t0 else None


#: Records per latency run that carry the latency budget (WS_LATENCY_SAMPLE_EVERY).
PROBES = 300


def budget(
    stages: list[dict[str, Any]], probes: list[list[float]], log_append: bool
) -> dict[str, str]:
    """Median / p99 ms of each stage of a probe record's way, Kafka append to the client.

    ``stages``: the server's ``latency_sample`` events; ``probes``: (partition,
    offset, record timestamp, received ms) from the sampling clients. A record
    reaches 20 samplers, written at different places of the fan-out loop, so
    "written" is when the last of all clients' sockets was.
    """
    server = {(e["partition"], e["offset"]): e for e in stages}
    steps: dict[str, list[float]] = {}
    append = "Kafka append (LogAppendTime)" if log_append else "produce (CreateTime)"
    names = (
        f"{append} → fetch returned to wsrt",
        "fetch returned → hub publish started",
        "hub publish → last client's socket written",
        "last socket written → sample client received",
        f"total: {append} → sample client received",
    )
    for partition, offset, _timestamp, received in probes:
        e = server.get((partition, offset))
        if e is None:
            continue
        times = (e["appended_ms"], e["fetched_ms"], e["published_ms"], e["written_ms"], received)
        for index, name in enumerate(names[:4]):
            steps.setdefault(name, []).append(times[index + 1] - times[index])
        steps.setdefault(names[4], []).append(received - e["appended_ms"])
    out = {}
    for name in names:
        values = steps.get(name)
        if values:
            out[f"budget: {name}, p50 / p99 ms"] = (
                f"{percentile(values, 0.5):.1f} / {percentile(values, 0.99):.1f}"
            )
    if steps:
        out["budget: probes (records x sampling clients)"] = str(len(steps[names[4]]))
    return out


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
