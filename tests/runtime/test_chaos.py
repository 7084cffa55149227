"""Chaos suite: real host crashes, hangs past the deadline and NaN updates on Ray.

Marked ``chaos`` (run alone with ``pytest -m chaos``); part of the default run and CI.
"""

import pytest

from fedray import api, config
from fedray.client.behaviours import simulated_fault
from tests.conftest import ROOT

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.chaos]

BASE = [
    "rounds=20",
    "data.num_clients=6",
    "data.num_samples=6000",
    "strategy.min_fit_clients=1",
    "runtime.progress=false",
]
CHAOS = [
    "faults.crash_rate=0.1",  # 12 crashes, 4 hangs and 5 NaNs in 20 rounds
    "faults.hang_rate=0.05",
    "faults.nan_rate=0.05",
    "runtime.clients_per_actor=1",
    "runtime.round_timeout_s=6",
    "runtime.max_restarts=-1",
]


def test_twenty_rounds_of_crashes_hangs_and_nans_complete_close_to_the_fault_free_run(tmp_path):
    path = ROOT / "experiments" / "blobs.yaml"
    clean = api.run(path, out=tmp_path / "clean", overrides=[*BASE, "runtime.executor=local"])
    chaos = api.run(path, out=tmp_path / "chaos", overrides=[*BASE, *CHAOS])
    cfg = config.load(path, [*BASE, *CHAOS])

    assert [r["round"] for r in chaos.rows] == list(range(1, 21))
    injected = {"crash": 0, "hang": 0, "nan": 0}
    for row in chaos.rows:  # every injected fault is counted, in its own round
        kinds = [simulated_fault(cfg.faults, cfg.seed, row["round"], c) for c in range(6)]
        for k in kinds:
            if k is not None:
                injected[k] += 1
        faults = sum(k is not None for k in kinds)
        assert row["clients/failed"] == faults, (row["round"], kinds)
        assert row["clients/ok"] == 6 - faults
    assert min(injected.values()) > 0, injected  # the schedule exercises every kind
    assert sum(injected.values()) >= 20
    gap = clean.final["eval/accuracy"] - chaos.final["eval/accuracy"]
    assert abs(gap) <= 0.02, (clean.final["eval/accuracy"], chaos.final["eval/accuracy"])
