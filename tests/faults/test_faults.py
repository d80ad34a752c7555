"""The fault suite's short form on Apache Kafka (tests/faults/suite.py).

One cycle of each fault; ``WSRT_FAULT_CYCLES=3`` runs the long form of the
cluster scenarios (three in a row on one cluster).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.faults.suite import CLUSTER_SCENARIOS, SCENARIOS, table
from tests.faults.suite import run_scenario as run

pytestmark = pytest.mark.integration

#: /healthz names what happened, or is right again, within this many seconds.
TRUTHFUL_WITHIN = 15.0


@pytest.mark.timeout(300)
@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_nothing_is_lost_duplicated_or_reordered(scenario: str, tmp_path: Path) -> None:
    (outcome,) = await run(scenario, 1, tmp_path)
    print("\n" + table([outcome]))
    (cycle,) = outcome.cycles
    assert outcome.recovered, table([outcome])
    assert cycle.degraded_s is not None, "the fault never showed in /healthz"
    assert outcome.produced > 0 and outcome.lost == 0, table([outcome])
    assert outcome.out_of_order == 0, table([outcome])
    if scenario != "server-kill":  # the client stayed connected: exactly once
        assert outcome.duplicated == 0, table([outcome])
        assert cycle.degraded_s <= TRUTHFUL_WITHIN
        assert cycle.ok_s is not None and cycle.ok_s <= TRUTHFUL_WITHIN
        # What an operator reads in /healthz and the readiness log line:
        assert any("Kafka" in r or "kafka" in r for r in outcome.reasons), outcome.reasons


@pytest.mark.timeout(900)
@pytest.mark.parametrize("scenario", CLUSTER_SCENARIOS)
async def test_a_cluster_losing_a_broker_loses_no_record(scenario: str, tmp_path: Path) -> None:
    """Three brokers, one killed, restarted or frozen: every record once, in order, in both modes.

    The cluster still serves every partition, so that is no outage: /healthz
    says which broker is away while it stays ok (or is ok again in time).
    """
    cycles = int(os.environ.get("WSRT_FAULT_CYCLES", "1"))
    outcomes = await run(scenario, cycles, tmp_path)
    shown = table(outcomes)
    print("\n" + shown)
    assert {o.scenario for o in outcomes} == {f"{scenario} (broadcast)", f"{scenario} (shared)"}
    for outcome in outcomes:
        print("\n".join(outcome.consumer))
        assert outcome.recovered, shown
        assert outcome.produced > 0 and outcome.lost == 0, shown
        assert outcome.duplicated == 0 and outcome.out_of_order == 0, (shown, outcome.consumer)
        for cycle in outcome.cycles:
            assert cycle.degraded_s is None or (
                cycle.ok_s is not None and cycle.ok_s <= TRUTHFUL_WITHIN
            ), shown
            assert cycle.noted_s is not None and cycle.noted_s <= TRUTHFUL_WITHIN, shown
        assert any("away" in note for note in outcome.notes), outcome.notes
