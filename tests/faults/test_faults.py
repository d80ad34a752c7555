"""The fault suite's short form: one cycle of each fault on Apache Kafka (tests/faults/suite.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.suite import SCENARIOS, table
from tests.faults.suite import run_scenario as run

pytestmark = pytest.mark.integration


@pytest.mark.timeout(300)
@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_nothing_is_lost_duplicated_or_reordered(scenario: str, tmp_path: Path) -> None:
    outcome = await run(scenario, 1, tmp_path)
    print("\n" + table([outcome]))
    (cycle,) = outcome.cycles
    assert outcome.recovered, table([outcome])
    assert cycle.degraded_s is not None, "the fault never showed in /healthz"
    assert outcome.produced > 0 and outcome.lost == 0, table([outcome])
    assert outcome.out_of_order == 0, table([outcome])
    if scenario != "server-kill":  # the client stayed connected: exactly once
        assert outcome.duplicated == 0, table([outcome])
        assert cycle.degraded_s <= 15 and cycle.ok_s is not None and cycle.ok_s <= 15
        # What an operator reads in /healthz and the readiness log line:
        assert any("Kafka" in r or "kafka" in r for r in outcome.reasons), outcome.reasons
