"""Apache Kafka's jars are fetched once and reused by later runs."""

from __future__ import annotations

import io
import re
import shutil

import pytest

from wsrt.brokers import BrokerError, apache
from wsrt.tools.progress import Progress


def test_second_resolution_reuses_the_cache(tmp_path, monkeypatch) -> None:
    if shutil.which("mvn") is None:
        pytest.skip("Maven is not installed: the Apache Kafka broker is not used here")
    real_which = shutil.which
    monkeypatch.setenv(apache.CACHE_ENV, str(tmp_path))
    shown = io.StringIO()
    libs = apache.ensure_jars(Progress("wsrt", shown, live=False))
    # Piped: a line when it starts and one when it is done, nothing in between.
    lines = shown.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in shown.getvalue() and "\x1b" not in shown.getvalue()
    assert lines[0].startswith(f"wsrt: fetching Apache Kafka {apache.KAFKA_VERSION} jars")
    assert re.fullmatch(
        r"wsrt: Apache Kafka \S+: (\d+) jars \(\d+ MB\) in place in \d+s, \d+ files downloaded from Maven Central",
        lines[1],
    )
    assert int(lines[1].split(": ")[2].split()[0]) == len(list(libs.iterdir()))
    assert any(libs.glob("kafka_2.13-*.jar")) and any(libs.glob("kafka-clients-*.jar"))
    assert (apache.cache_dir() / ".complete").read_text().strip() == apache.KAFKA_VERSION
    # Without Maven the second call still succeeds: nothing is fetched again.
    monkeypatch.setattr(apache.shutil, "which", lambda name: None)
    assert apache.ensure_jars() == libs
    # On a terminal the status line counts the jars as they come, redrawn in place.
    monkeypatch.setattr(apache.shutil, "which", real_which)
    monkeypatch.setattr("wsrt.tools.progress.REDRAW_SECONDS", 0)
    monkeypatch.setenv(apache.CACHE_ENV, str(tmp_path / "second"))
    terminal = io.StringIO()
    apache.ensure_jars(Progress("wsrt", terminal, live=True))
    assert re.search(r"\r\x1b\[2Kwsrt: \d+ files downloaded, 1 jars in place", terminal.getvalue())
    assert terminal.getvalue().endswith("files downloaded from Maven Central\n")
    monkeypatch.setattr(apache.shutil, "which", lambda name: None)
    # An interrupted first resolution (no marker) is not trusted.
    (apache.cache_dir() / ".complete").unlink()
    with pytest.raises(BrokerError, match="needs Maven"):
        apache.ensure_jars()
