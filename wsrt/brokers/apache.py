"""Apache Kafka 4 (KRaft, one combined broker+controller node) from Maven Central jars."""

from __future__ import annotations

import base64
import fcntl
import os
import shutil
import subprocess
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

from wsrt.brokers.base import Broker, BrokerError, free_port
from wsrt.config import tool_setting
from wsrt.tools.progress import Progress

KAFKA_VERSION = "4.1.1"
#: Where resolved jars are kept between runs (override with WSRT_CACHE_DIR).
CACHE_ENV = "WSRT_CACHE_DIR"


def cache_dir() -> Path:
    xdg = tool_setting("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    base = tool_setting(CACHE_ENV) or os.path.join(xdg, "wsrt")
    return Path(base) / f"kafka-{KAFKA_VERSION}"


def _resource(name: str) -> Path:
    return Path(str(resources.files("wsrt.brokers").joinpath("kafka", name)))


def ensure_jars(progress: Progress | None = None) -> Path:
    """The directory of Kafka's runtime jars, resolved with Maven on first use.

    Concurrent runs wait on a file lock; a finished resolution is marked by a
    ``.complete`` file, so an interrupted one is redone rather than trusted.
    The first resolution downloads about 100 MB: ``progress`` (default: on
    stderr) says so, and counts the files on a terminal.
    """
    target = cache_dir()
    libs = target / "libs"
    if (target / ".complete").exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError("Apache Kafka needs Maven (mvn) on PATH to fetch its jars")
    target.mkdir(parents=True, exist_ok=True)
    with open(target / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / ".complete").exists():
            return libs
        shutil.rmtree(libs, ignore_errors=True)
        progress = progress or Progress("wsrt")
        progress.start(
            f"fetching Apache Kafka {KAFKA_VERSION} jars with Maven (once; kept in {target}) …"
        )
        started = time.monotonic()
        code, output, files = _maven(
            [
                mvn, "-B", "-f", str(_resource("pom.xml")),
                "dependency:copy-dependencies", "-DincludeScope=runtime",
                f"-DoutputDirectory={libs}",
            ],
            lambda got, placed: progress.update(f"{got} files downloaded, {placed} jars in place"),
        )  # fmt: skip
        if code != 0 or not any(libs.glob("kafka_2.13-*.jar")):
            raise BrokerError(
                f"mvn could not fetch Apache Kafka {KAFKA_VERSION}:\n{''.join(output)[-3000:]}"
            )
        jars = list(libs.iterdir())
        size = sum(f.stat().st_size for f in jars) / 1e6
        progress.finish(
            f"Apache Kafka {KAFKA_VERSION}: {len(jars)} jars ({size:.0f} MB) in place in "
            f"{time.monotonic() - started:.0f}s, {files} files downloaded from Maven Central"
        )
        (target / ".complete").write_text(KAFKA_VERSION + "\n")
    return libs


def _maven(argv: list[str], step: Callable[[int, int], None]) -> tuple[int, list[str], int]:
    """Run Maven in batch mode; ``step(downloaded, copied)`` after each file it fetches or places.

    The exit status, the output's last lines, and the count of files downloaded.
    """
    tail: deque[str] = deque(maxlen=200)
    downloaded = copied = 0
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    )
    assert process.stdout is not None
    for line in process.stdout:
        tail.append(line)
        if line.startswith("Downloaded from"):
            downloaded += 1
        elif line.startswith("[INFO] Copying "):
            copied += 1
        else:
            continue
        step(downloaded, copied)
    return process.wait(), list(tail), downloaded


class ApacheKafka(Broker):
    kind = "apache"
    ready_line = "Kafka Server started"

    def __init__(self, port: int | None = None, workdir: Path | None = None) -> None:
        super().__init__(port, workdir)
        self.controller_port = free_port()
        self.java = shutil.which("java")
        self.libs: Path | None = None
        #: The KRaft cluster id the storage is formatted with (shared by a cluster's nodes).
        self.cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        #: The JVM's heap (a node of a test cluster runs with less).
        self.heap = ("-Xms256m", "-Xmx768m")
        #: More JVM options (system properties a test broker needs).
        self.jvm_options: list[str] = []

    def describe(self) -> str:
        return f"Apache Kafka {KAFKA_VERSION} (KRaft) on {self.bootstrap}"

    def prepare(self) -> None:
        if self.java is None:
            raise BrokerError("Apache Kafka needs Java on PATH")
        self.libs = ensure_jars()
        data = self.workdir / "data"
        if (data / "meta.properties").exists():
            return  # restarted on the same data: keep the log
        properties = self.workdir / "server.properties"
        properties.write_text("\n".join([*self.properties(data), ""]))
        result = subprocess.run(
            [*self._java(), "kafka.tools.StorageTool", "format",
             # "=" form: a base64 id may begin with "-".
             f"--cluster-id={self.cluster_id}", "-c", str(properties), *self.format_options()],
            capture_output=True,
            text=True,
        )  # fmt: skip
        if result.returncode != 0:
            raise BrokerError(f"formatting Kafka storage failed:\n{result.stdout}{result.stderr}")

    def properties(self, data: Path) -> list[str]:
        """The broker's server.properties, one line each (``data``: its log directory)."""
        return [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
            f"listeners=PLAINTEXT://127.0.0.1:{self.port},"
            f"CONTROLLER://127.0.0.1:{self.controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name=PLAINTEXT",
            f"log.dirs={data}",
            "num.partitions=1",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=3",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            # Compacted topics in the tests are cleaned within a second, not 15.
            "log.cleaner.backoff.ms=500",
            "auto.create.topics.enable=false",
        ]

    def format_options(self) -> list[str]:
        """More options for formatting the storage (a subclass adds SCRAM users there)."""
        return []

    def _java(self) -> list[str]:
        assert self.java is not None and self.libs is not None
        return [
            self.java,
            *self.heap,
            *self.jvm_options,
            "-XX:+UseSerialGC",
            f"-Dlog4j2.configurationFile={_resource('log4j2.yaml')}",
            "-cp",
            f"{self.libs}/*",
        ]

    def command(self) -> Sequence[str]:
        return [*self._java(), "kafka.Kafka", str(self.workdir / "server.properties")]
