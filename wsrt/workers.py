"""``WS_WORKERS``: several server processes on one port, so a node's every core serves.

:func:`supervise` is the parent. It starts N workers, each ``wsrt serve`` in
full (its own consumer: in broadcast mode its own commit group, ``-w<i>`` on
the replica id), all listening on the same port with ``SO_REUSEPORT``, so the
kernel spreads new connections over them. It restarts a worker that dies,
with backoff; it forwards SIGTERM and SIGINT and bounds the shutdown
(``WS_SHUTDOWN_TIMEOUT_SECONDS`` and a margin, then SIGKILL).

A worker answers ``/healthz`` and ``/metrics`` for the whole node
(:class:`Siblings`): each also listens on a Unix socket in the parent's run
directory, where its siblings ask for their readiness and their metrics.
``/healthz`` is 200 only when every worker is ready; ``/metrics`` carries every
worker's samples with a ``worker`` label (``sum by (…)`` gives the node).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from wsrt.aio import Backoff
from wsrt.config import Settings
from wsrt.logs import EventLogger
from wsrt.process import die_with_parent

#: How long a worker waits for a sibling's answer on its control socket.
SIBLING_TIMEOUT_SECONDS = 1.0
#: Added to WS_SHUTDOWN_TIMEOUT_SECONDS before the parent kills what is left.
SHUTDOWN_MARGIN_SECONDS = 5.0
#: A worker that ran this long before it died was healthy: its backoff starts again.
STABLE_SECONDS = 60.0
#: Deaths in a row, each within STABLE_SECONDS of its start, after which the parent gives up.
MAX_QUICK_EXITS = 5


class Restarts:
    """When to start a dead worker again, and when to stop trying; the clock passed in.

    A worker that dies soon after it started is crash-looping (a bad setting,
    a port, a bug at start): after :data:`MAX_QUICK_EXITS` such deaths in a
    row the parent gives up and exits non-zero, so the orchestrator sees a
    failed process instead of a node whose ``/healthz`` says 503 for ever.
    A worker that ran :data:`STABLE_SECONDS` or more was healthy: the count
    and the backoff start again.
    """

    def __init__(self, initial: float = 0.5, most: float = 10.0) -> None:
        self.backoff = Backoff(initial, most)
        self.quick_exits = 0
        self.started_at = 0.0

    def started(self, now: float) -> None:
        self.started_at = now

    def exited(self, now: float) -> float | None:
        """The delay before the next start, or ``None``: give up."""
        if now - self.started_at >= STABLE_SECONDS:
            self.quick_exits = 0
            self.backoff.reset()
        self.quick_exits += 1
        if self.quick_exits >= MAX_QUICK_EXITS:
            return None
        return self.backoff.next()


@dataclass(frozen=True)
class WorkerSpec:
    """Who this worker is: ``--worker INDEX:COUNT:RUNDIR`` (set by the parent)."""

    index: int
    count: int
    rundir: Path

    @classmethod
    def parse(cls, text: str) -> WorkerSpec:
        index, count, rundir = text.split(":", 2)
        return cls(int(index), int(count), Path(rundir))

    def __str__(self) -> str:
        return f"{self.index}:{self.count}:{self.rundir}"

    def socket_of(self, index: int) -> Path:
        return self.rundir / f"worker-{index}.sock"

    def settings(self, settings: Settings) -> Settings:
        """This worker's settings: one process, its own replica id (and so commit group)."""
        return settings.replace(workers=1, replica_id=f"{settings.replica_id}-w{self.index}")


# -- the parent -----------------------------------------------------------------


def _reserve_port(host: str | None, port: int) -> tuple[socket.socket, int]:
    """A bound (not listening) ``SO_REUSEPORT`` socket that holds the port for the workers."""
    family = socket.AF_INET6 if host and ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host or ("::" if family == socket.AF_INET6 else "0.0.0.0"), port))
    return sock, sock.getsockname()[1]


def supervise(settings: Settings, argv: list[str]) -> int:
    """Run ``settings.workers`` workers of ``argv`` (a ``wsrt serve`` command) until a signal."""
    return asyncio.run(_Parent(settings, argv).run())


class _Parent:
    def __init__(self, settings: Settings, argv: list[str]) -> None:
        self.settings = settings
        self.argv = argv
        self.log = EventLogger("wsrt.workers")
        self.workers: dict[int, subprocess.Popen[bytes]] = {}
        self.restarts = {i: Restarts() for i in range(settings.workers)}
        self.stopping = False
        self.stop = asyncio.Event()
        #: Set when a worker crash-loops: the message the node stops with.
        self.given_up: str | None = None
        self.rundir = Path()
        self.bind = ""

    async def run(self) -> int:
        s = self.settings
        holder, port = _reserve_port(s.bind_host, s.bind_port)
        self.rundir = Path(tempfile.mkdtemp(prefix="wsrt-workers-"))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        host = s.bind_host or ""
        self.bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        for index in range(s.workers):
            self._start(index)
        self.log.info(
            "workers_started", "workers started", workers=s.workers, port=port,
            pids=",".join(str(w.pid) for w in self.workers.values()),
        )  # fmt: skip
        try:
            await self.stop.wait()
            if self.given_up is not None:
                self.log.error("workers_crash_looping", self.given_up)
                await self._shutdown(loop)
                return 1
            return await self._shutdown(loop)
        finally:
            holder.close()
            shutil.rmtree(self.rundir, ignore_errors=True)

    def _start(self, index: int) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        spec = WorkerSpec(index, s.workers, self.rundir)
        # The last flag wins: a port 0 of the command line is the reserved one,
        # and a random default replica id is drawn once (a restarted worker
        # rejoins its commit group).
        argv = [
            *self.argv,
            "--bind",
            self.bind,
            "--replica-id",
            s.replica_id,
            "--worker",
            str(spec),
        ]
        # Their own session: a terminal's Ctrl-C reaches the parent alone, which
        # forwards one SIGTERM (a second signal would make a worker skip its drain).
        self.workers[index] = subprocess.Popen(
            argv, preexec_fn=die_with_parent, start_new_session=True
        )
        self.restarts[index].started(loop.time())
        pidfd = os.pidfd_open(self.workers[index].pid)
        loop.add_reader(pidfd, lambda: self._exited(index, pidfd))

    def _exited(self, index: int, pidfd: int) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(pidfd)
        os.close(pidfd)
        code = self.workers[index].wait()
        if self.stopping:
            return
        delay = self.restarts[index].exited(loop.time())
        if delay is None:
            self.given_up = (
                f"worker {index} exited {MAX_QUICK_EXITS} times in a row within "
                f"{STABLE_SECONDS:g}s of starting (last exit code {code}); "
                "stopping: see its log lines above for why"
            )
            self.stop.set()
            return
        self.log.error(
            "worker_exited", "a worker exited; starting another", worker=index, code=code,
            retry_in_s=round(delay, 2),
        )  # fmt: skip
        loop.call_later(delay, self._restart, index)

    def _restart(self, index: int) -> None:
        if not self.stopping:
            self._start(index)
            self.log.info(
                "worker_started", "worker started again", worker=index,
                pid=self.workers[index].pid,
            )  # fmt: skip

    async def _shutdown(self, loop: asyncio.AbstractEventLoop) -> int:
        """Forward SIGTERM, wait within the bound, kill what is left; 0 when all exited 0."""
        self.stopping = True
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._kill_all)
        for worker in self.workers.values():
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        bound = self.settings.shutdown_timeout + SHUTDOWN_MARGIN_SECONDS
        codes = await asyncio.gather(
            *(asyncio.to_thread(_wait, w, bound) for w in self.workers.values())
        )
        if any(code is None for code in codes):
            self.log.error("shutdown_forced", f"workers still running after {bound:g}s: killed")
            self._kill_all()
            return 1
        self.log.info("workers_stopped", "workers stopped", codes=",".join(map(str, codes)))
        return 0 if all(code == 0 for code in codes) else 1

    def _kill_all(self) -> None:
        for worker in self.workers.values():
            if worker.poll() is None:
                worker.kill()


def _wait(process: subprocess.Popen[bytes], timeout: float) -> int | None:
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


# -- the workers ----------------------------------------------------------------


class Siblings:
    """A worker's view of the node: its control socket, and its siblings' answers."""

    def __init__(
        self,
        spec: WorkerSpec,
        health: Callable[[], dict[str, Any]],
        metrics: Callable[[], bytes],
    ) -> None:
        self.spec = spec
        self._health = health
        self._metrics = metrics
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        path = self.spec.socket_of(self.spec.index)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a previous life of this worker
        self._server = await asyncio.start_unix_server(self._answer, str(path))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(FileNotFoundError):
                self.spec.socket_of(self.spec.index).unlink()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            question = (await reader.readline()).strip()
            if question == b"healthz":
                writer.write(orjson.dumps(self._health()))
            elif question == b"metrics":
                writer.write(self._metrics())
            await writer.drain()
        finally:
            writer.close()

    async def _ask(self, index: int, question: bytes) -> bytes | None:
        """A sibling's answer, or ``None`` when it does not answer (starting, restarting)."""
        try:
            async with asyncio.timeout(SIBLING_TIMEOUT_SECONDS):
                reader, writer = await asyncio.open_unix_connection(self.spec.socket_of(index))
                writer.write(question + b"\n")
                answer = await reader.read()
                writer.close()
                return answer
        except (OSError, TimeoutError):
            return None

    def _others(self) -> list[int]:
        return [i for i in range(self.spec.count) if i != self.spec.index]

    async def health(self, own: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        """The node's readiness: ready only when every worker is; the first reason why not."""
        answers = await asyncio.gather(*(self._ask(i, b"healthz") for i in self._others()))
        states = {self.spec.index: own}
        for index, answer in zip(self._others(), answers, strict=True):
            states[index] = (
                orjson.loads(answer) if answer
                else {"status": "starting", "reason": "not answering (starting or restarting)"}
            )  # fmt: skip
        body: dict[str, Any] = {"status": "ok", "workers": self.spec.count}
        for index in sorted(states):
            state = states[index]
            if state["status"] != "ok":
                body["status"] = state["status"]
                body["reason"] = f"worker {index}: {state.get('reason', state['status'])}"
                break
        body["connections"] = sum(int(s.get("connections", 0)) for s in states.values())
        return body["status"] == "ok", body

    async def metrics(self, own: bytes) -> bytes:
        """Every worker's samples, each with its ``worker`` label, in one exposition."""
        answers = await asyncio.gather(*(self._ask(i, b"metrics") for i in self._others()))
        texts = {self.spec.index: own}
        texts.update((i, a) for i, a in zip(self._others(), answers, strict=True) if a is not None)
        return merge_metrics(texts)


def merge_metrics(texts: dict[int, bytes]) -> bytes:
    """Prometheus expositions of several workers as one, each sample labelled ``worker``."""
    from prometheus_client.exposition import generate_latest
    from prometheus_client.metrics_core import Metric
    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_client.registry import Collector, CollectorRegistry
    from prometheus_client.samples import Sample

    families: dict[str, Metric] = {}
    for index in sorted(texts):
        for family in text_string_to_metric_families(texts[index].decode()):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            merged.samples += [
                Sample(s.name, {**s.labels, "worker": str(index)}, s.value, s.timestamp)
                for s in family.samples
            ]

    class _Merged(Collector):
        def collect(self) -> Any:
            return iter(families.values())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged())
    return generate_latest(registry)
