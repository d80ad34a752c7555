"""A real Schema Registry on loopback: Apicurio Registry 2.6 from Maven Central, run with Java.

For the tests of the schema formats and ``wsrt bench -s formats``, as the
brokers of this package are for ``wsrt dev``, the tests and the benchmarks.

The ``all`` tarball of ``io.apicurio:apicurio-registry-app`` is fetched with
Maven once into the cache that keeps Kafka's jars (``WSRT_CACHE_DIR``) and
unpacked there. :class:`ApicurioRegistry` runs it on a free port with its
storage in an H2 file, so a registry stopped and started again (the outage
test) still knows its schemas. Its Confluent-compatible API is
:attr:`ApicurioRegistry.url` (``/apis/ccompat/v7``).
"""

from __future__ import annotations

import fcntl
import shutil
import ssl
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from wsrt.brokers import BrokerError, free_port
from wsrt.brokers.apache import cache_dir
from wsrt.process import Child
from wsrt.tools.progress import Progress

VERSION = "2.6.13.Final"
ARTIFACT = f"io.apicurio:apicurio-registry-app:{VERSION}:tar.gz:all"


def install() -> Path:
    """The unpacked registry (its runner jar and ``lib/``), fetched with Maven on first use."""
    target = cache_dir().parent / f"apicurio-registry-{VERSION}"
    if (target / ".complete").exists():
        return target
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError("Apicurio Registry needs Maven (mvn) on PATH to fetch it")
    target.mkdir(parents=True, exist_ok=True)
    with open(target / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / ".complete").exists():
            return target
        progress = Progress("wsrt")
        progress.start(
            f"fetching Apicurio Registry {VERSION} with Maven (once; kept in {target}) …"
        )
        started = time.monotonic()
        with tempfile.TemporaryDirectory(dir=target) as download:
            result = subprocess.run(
                [mvn, "-B", "-q", "dependency:copy", f"-Dartifact={ARTIFACT}",
                 f"-DoutputDirectory={download}"],
                capture_output=True, text=True,
            )  # fmt: skip
            archives = list(Path(download).glob("*.tar.gz"))
            if result.returncode != 0 or not archives:
                raise BrokerError(f"mvn could not fetch {ARTIFACT}:\n{result.stdout[-3000:]}")
            with tarfile.open(archives[0]) as archive:
                archive.extractall(target / "app", filter="data")
        (target / ".complete").write_text(VERSION + "\n")
        progress.finish(
            f"Apicurio Registry {VERSION} in place in {time.monotonic() - started:.0f}s"
        )
    return target


class ApicurioRegistry:
    """``tls``: its certificate and key (PEM), then it answers https only;
    ``options``: more ``-D`` properties (the tests' authentication)."""

    def __init__(
        self,
        workdir: Path,
        tls: tuple[Path, Path] | None = None,
        options: Sequence[str] = (),
        cafile: Path | None = None,
    ) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.tls = tls
        self.options = list(options)
        self.cafile = cafile
        self.child: Child[str] | None = None

    @property
    def url(self) -> str:
        """The Confluent-compatible API (what WS_SCHEMA_REGISTRY_URL names)."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}/apis/ccompat/v7"

    def _listener(self) -> list[str]:
        if self.tls is None:
            return [f"-Dquarkus.http.port={self.port}"]
        cert, key = self.tls
        return [
            f"-Dquarkus.http.ssl-port={self.port}", f"-Dquarkus.http.port={free_port()}",
            "-Dquarkus.http.insecure-requests=disabled",
            f"-Dquarkus.http.ssl.certificate.files={cert}",
            f"-Dquarkus.http.ssl.certificate.key-files={key}",
        ]  # fmt: skip

    def start(self, timeout: float = 120) -> ApicurioRegistry:
        app = install() / "app"
        java = shutil.which("java")
        if java is None:
            raise BrokerError("Apicurio Registry needs Java on PATH")
        runner = next(app.glob("*-runner.jar"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.child = Child(
            [
                java, "-Xms64m", "-Xmx384m", "-XX:+UseSerialGC", *self._listener(),
                "-Dquarkus.http.host=127.0.0.1",
                # Kept in a file: a registry stopped and started again knows its schemas.
                f"-Dquarkus.datasource.jdbc.url=jdbc:h2:file:{self.workdir / 'registry'}",
                *self.options, "-jar", str(runner),
            ],
            cwd=self.workdir, merge_stderr=True, log_path=self.workdir / "registry.log",
        ).start()  # fmt: skip
        deadline = time.monotonic() + timeout
        self.child.wait_for(lambda line: "Listening on" in line, timeout)
        context = ssl.create_default_context(cafile=self.cafile) if self.cafile else None
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(
                    f"{self.url}/subjects", timeout=2, context=context
                ) as answer:
                    if answer.status == 200:
                        return self
            except urllib.error.HTTPError as exc:
                if exc.code == 401:  # it answers, and asks who is asking
                    return self
            except (urllib.error.URLError, OSError):
                pass
            if self.child.poll() is not None:
                break
            time.sleep(0.2)  # the HTTP API follows the start-up line within moments
        log = (self.workdir / "registry.log").read_text(errors="replace")[-3000:]
        self.stop()
        raise BrokerError(f"Apicurio Registry did not start:\n{log}")

    def stop(self) -> None:
        child, self.child = self.child, None
        if child is not None:
            child.stop(timeout=15)

    def __enter__(self) -> ApicurioRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
