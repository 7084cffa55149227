"""Fault injection: a client's crash, hang or NaN is its own; a host's crash costs no round."""

import csv
import re

import numpy as np
import pytest

from fedray import api, config
from fedray.client.behaviours import simulated_fault, simulated_host_fault
from fedray.runtime.plan import group_clients

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
    overrides = [
        *FAULTS,
        "rounds=6",
        "data.num_clients=4",
        "strategy.min_fit_clients=1",
        "runtime.executor=local",
        "runtime.progress=false",
    ]
    hist = api.run(linreg_config, out=tmp_path, overrides=overrides)
    expected = _expected(config.load(linreg_config, overrides))
    for row in hist.rows:
        faults = sum(k is not None for k in expected[row["round"]])
        assert row["clients/failed"] == faults and row["clients/ok"] == 4 - faults


PACKED = [
    "rounds=6",
    "data.num_clients=10",
    "runtime.clients_per_actor=5",
    "strategy.min_fit_clients=1",
    "runtime.executor=local",
    "runtime.progress=false",
    "runtime.pre_aggregate=false",
]


def _failures_csv(run):
    with (run.out_dir / "failures.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _host_crashes(cfg):
    """Per round, the hosts whose call the schedule kills (one re-execution each)."""
    groups = group_clients(cfg.data.num_clients, cfg.runtime.clients_per_actor)
    return {
        r: [
            h
            for h, g in enumerate(groups)
            if any(simulated_host_fault(cfg.faults, cfg.seed, r, c) == "crash" for c in g)
        ]
        for r in range(1, cfg.rounds + 1)
    }


def test_in_a_packed_host_each_fault_costs_only_its_own_client(
    tmp_path, linreg_config, numpy_hosts
):
    overrides = [*PACKED, "faults.crash_rate=0.2", "faults.hang_rate=0.05", "faults.nan_rate=0.05"]
    run = api.run(linreg_config, out=tmp_path, overrides=overrides)
    cfg = config.load(linreg_config, overrides)
    expected = _expected(cfg)
    scheduled = []
    for row in run.rows:
        kinds = expected[row["round"]]
        faults = {k: kinds.count(k) for k in ("crash", "hang", "nan") if k in kinds}
        assert row["clients/ok"] == 10 - sum(faults.values()), (row["round"], kinds)
        assert {k: row.get(f"failed/{k}", "") for k in faults} == faults
        scheduled += [(row["round"], c, k) for c, k in enumerate(kinds) if k is not None]
    assert len(scheduled) >= 10  # the schedule has faults in both hosts
    rows = _failures_csv(run)
    assert sorted((int(r["round"]), int(r["client"]), r["cause"]) for r in rows) == scheduled
    assert all(int(r["host"]) == int(r["client"]) // 5 and r["error"] for r in rows)
    # `fedray report` counts them by cause.
    from rich.console import Console

    from fedray.reports import report

    console = Console(record=True, width=120)
    console.print(report(run.out_dir))
    text = console.export_text()
    for kind, words in (("crash", "crashed"), ("hang", "hung"), ("nan", "NaN")):
        n = sum(1 for _, _, k in scheduled if k == kind)
        assert re.search(rf"{words} \(failures.csv\)\s*│\s*{n}\b", text), (words, n, text)


def test_a_host_crash_costs_no_round_and_no_weight(tmp_path, linreg_config, numpy_hosts):
    clean = api.run(linreg_config, out=tmp_path / "clean", overrides=PACKED)
    overrides = [*PACKED, "faults.host_crash_rate=0.1"]
    run = api.run(linreg_config, out=tmp_path / "crashy", overrides=overrides)
    crashes = _host_crashes(config.load(linreg_config, overrides))
    assert sum(map(len, crashes.values())) >= 3
    for row in run.rows:
        assert row["clients/ok"] == 10 and row["clients/failed"] == 0
        lost = crashes[row["round"]]
        assert row.get("hosts/restarted", 0) == len(lost)
        assert row.get("clients/rerun", 0) == 5 * len(lost)
    rows = _failures_csv(run)
    assert [(int(r["round"]), int(r["host"]), r["cause"]) for r in rows] == [
        (rnd, h, "host_restart") for rnd, hosts in crashes.items() for h in hosts
    ]
    for a, b in zip(clean.params, run.params, strict=True):  # re-executed clients: same updates
        np.testing.assert_array_equal(a, b)
    from rich.console import Console

    from fedray.reports import report

    console = Console(record=True, width=120)
    console.print(report(run.out_dir))
    n = sum(map(len, crashes.values()))
    assert re.search(rf"host calls re-run \(clients\)\s*│\s*{n} \({5 * n}\)", console.export_text())


def test_one_client_whose_training_raises_fails_alone():
    from dataclasses import replace

    from fedray.aggregators import Mean
    from fedray.client.host import ClientHost
    from fedray.client.spec import HostSpec
    from fedray.records import ClientFailure, ClientUpdate, RoundInfo
    from tests.fakes import NumpyTrainer

    class Broken(NumpyTrainer):  # client 1's data breaks the model
        def train(self, jobs, params):
            if any(job.cid == 1 for job in jobs):
                raise FloatingPointError("overflow in client 1's batch\nTraceback: ...")
            return super().train(jobs, params)

    cfg = config.load({"data": {"dataset": "linreg", "num_clients": 3}})
    spec = replace(HostSpec.from_config(cfg, (0, 1, 2), Mean()), trainer=Broken)
    host = ClientHost(spec)
    out = host.fit([0, 1, 2], host.initial_params(), RoundInfo(server_round=1, seed=0))
    assert [type(r) for r in out] == [ClientUpdate, ClientFailure, ClientUpdate]
    assert out[1].cause == "error" and out[1].reason == (
        "FloatingPointError: overflow in client 1's batch"
    )


# Real crashes on Ray, dedicated and packed: tests/runtime/test_chaos.py.


def test_a_hung_host_times_out_its_own_clients_only(tmp_path, linreg_config, numpy_hosts):
    overrides = [*PACKED, "faults.host_hang_rate=0.1", "runtime.round_timeout_s=5"]
    run = api.run(linreg_config, out=tmp_path, overrides=overrides)
    cfg = config.load(linreg_config, overrides)
    groups = group_clients(10, 5)
    hung = {
        (r, h)
        for r in range(1, 7)
        for h, g in enumerate(groups)
        if any(simulated_host_fault(cfg.faults, cfg.seed, r, c) == "hang" for c in g)
    }
    assert 0 < len(hung) < 12
    for row in run.rows:
        lost = 5 * sum(1 for r, _ in hung if r == row["round"])
        assert row["clients/ok"] == 10 - lost and row.get("failed/timeout", 0) == lost
    rows = _failures_csv(run)
    assert {(int(r["round"]), int(r["host"])) for r in rows} == hung
    assert {r["cause"] for r in rows} == {"timeout"}


def test_a_host_hang_without_a_round_deadline_is_refused_naming_both_keys():
    with pytest.raises(config.ConfigError) as err:
        config.load({}, ["faults.host_hang_rate=0.1"])
    assert "faults.host_hang_rate=0.1 does not work with runtime.round_timeout_s=None" in str(
        err.value
    )
