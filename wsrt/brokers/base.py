"""What every broker kind shares: the process, its lifecycle and its errors (:class:`Broker`)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from wsrt.errors import WsrtError
from wsrt.process import Child

START_TIMEOUT_SECONDS = 90.0


class BrokerError(WsrtError):
    """A broker could not be set up or did not start; the message carries its log."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class Broker:
    """A single-node broker process on ``127.0.0.1:port``."""

    kind = "broker"
    #: A line the process prints once it accepts clients.
    ready_line = ""

    def __init__(self, port: int | None = None, workdir: Path | None = None) -> None:
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"wsrt-{self.kind}-"))
        self.log_path = self.workdir / "broker.log"
        self.child: Child[str] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def describe(self) -> str:
        return f"{self.kind} on {self.bootstrap}"

    # -- subclass hooks --------------------------------------------------------

    def prepare(self) -> None:
        """Fetch and format what the process needs (may take a while the first time)."""

    def command(self) -> Sequence[str]:
        raise NotImplementedError

    # -- lifecycle -------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT_SECONDS) -> Broker:
        """Start and wait until it answers metadata (blocking: from async code use a thread).

        A broker stopped with ``keep_data=True`` starts again on the same port
        and (Apache Kafka) the same log.
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.prepare()
        self.child = Child(
            self.command(), cwd=self.workdir, merge_stderr=True, log_path=self.log_path
        ).start()
        deadline = time.monotonic() + timeout
        try:
            self._wait_started(deadline)
            self._wait_metadata(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the broker process (the fault suite stops, kills and freezes it)."""
        assert self.child is not None
        self.child.signal(sig)

    def wait_exit(self, timeout: float) -> int:
        assert self.child is not None
        return self.child.wait_exit(timeout)

    @property
    def pid(self) -> int:
        assert self.child is not None
        return self.child.pid

    def _wait_started(self, deadline: float) -> None:
        assert self.child is not None
        line = self.child.wait_for(
            lambda line: self.ready_line in line, deadline - time.monotonic()
        )
        if self.child.poll() is not None:
            raise BrokerError(
                f"{self.describe()} exited with {self.child.poll()}:\n{self.log_tail()}"
            )
        if line is None:
            raise BrokerError(f"{self.describe()} did not start in time:\n{self.log_tail()}")

    def _wait_metadata(self, deadline: float) -> None:
        """A real metadata request must succeed before the broker counts as up."""
        from aiokafka.errors import KafkaError

        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                asyncio.run(probe(self.bootstrap))
                return
            except (KafkaError, OSError, TimeoutError) as exc:
                last = exc
                # The broker printed its start-up line; metadata follows within
                # moments. Pace the retries instead of spinning.
                time.sleep(0.2)
        raise BrokerError(
            f"{self.describe()} answered no metadata request ({last}):\n{self.log_tail()}"
        )

    def stop(self, *, keep_data: bool = False) -> None:
        """Stop the process (SIGTERM, then SIGKILL) and, unless ``keep_data``, remove its data."""
        child, self.child = self.child, None
        if child is not None:
            child.stop(timeout=15)
        if not keep_data:
            self.cleanup()

    def cleanup(self) -> None:
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no broker log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


async def probe(bootstrap: str, seconds: float = 5.0) -> list[str]:
    """One metadata request; returns the topic names. Raises when the broker does not answer."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(seconds * 1000))
    try:
        async with asyncio.timeout(seconds):
            await admin.start()
            topics: list[str] = await admin.list_topics()
        return topics
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
