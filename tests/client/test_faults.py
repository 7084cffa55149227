"""Fault injection: crashes restart hosts, hangs hit the round deadline, NaN is rejected."""

import pytest

from fedray import api, config
from fedray.client.behaviours import simulated_fault

FAULTS = ["faults.crash_rate=0.15", "faults.hang_rate=0.1", "faults.nan_rate=0.15"]


def _expected(cfg):
    return {
        r: [simulated_fault(cfg.faults, cfg.seed, r, c) for c in range(cfg.data.num_clients)]
        for r in range(1, cfg.rounds + 1)
    }


def test_fault_schedule_is_seeded_and_follows_the_rates():
    cfg = config.load({"rounds": 400, "data": {"num_clients": 10}}, FAULTS)
    kinds = [k for row in _expected(cfg).values() for k in row]
    n = len(kinds)
    assert abs(kinds.count("crash") / n - 0.15) < 0.02
    assert abs(kinds.count("hang") / n - 0.10) < 0.02
    assert abs(kinds.count("nan") / n - 0.15) < 0.02
    assert kinds == [k for row in _expected(cfg).values() for k in row]


@pytest.mark.keras
def test_in_process_faults_are_counted_failures(tmp_path, linreg_config):
    pytest.importorskip("tensorflow")
    overrides = [*FAULTS, "rounds=6", "data.num_clients=4", "strategy.min_fit_clients=1",
                 "runtime.executor=local", "runtime.progress=false"]  # fmt: skip
    hist = api.run(linreg_config, out=tmp_path, overrides=overrides)
    expected = _expected(config.load(linreg_config, overrides))
    for row in hist.rows:
        faults = sum(k is not None for k in expected[row["round"]])
        assert row["clients/failed"] == faults and row["clients/ok"] == 4 - faults


# Real crashes and hangs on Ray: tests/runtime/test_chaos.py (20 rounds, 6 clients).
