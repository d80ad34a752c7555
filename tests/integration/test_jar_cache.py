"""Apache Kafka's jars are fetched once and reused by later runs."""

from __future__ import annotations

import shutil

import pytest

from wsrt.brokers import BrokerError, apache


def test_second_resolution_reuses_the_cache(tmp_path, monkeypatch) -> None:
    if shutil.which("mvn") is None:
        pytest.skip("Maven is not installed: the Apache Kafka broker is not used here")
    monkeypatch.setenv(apache.CACHE_ENV, str(tmp_path))
    libs = apache.ensure_jars()
    assert any(libs.glob("kafka_2.13-*.jar")) and any(libs.glob("kafka-clients-*.jar"))
    assert (apache.cache_dir() / ".complete").read_text().strip() == apache.KAFKA_VERSION
    # Without Maven the second call still succeeds: nothing is fetched again.
    monkeypatch.setattr(apache.shutil, "which", lambda name: None)
    assert apache.ensure_jars() == libs
    # An interrupted first resolution (no marker) is not trusted.
    (apache.cache_dir() / ".complete").unlink()
    with pytest.raises(BrokerError, match="needs Maven"):
        apache.ensure_jars()
