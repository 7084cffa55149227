"""Chaos suite on Ray: client crashes, hangs and NaNs, and real host crashes and hangs.

A client's fault is its own, on dedicated and on packed hosts; a host that dies
mid-round has its clients run again in the same round; a host that hangs is killed at
the round deadline. The packed test trains Keras models and compares accuracy; the
other two test the runtime alone, so their hosts train with numpy (no TensorFlow: a
restart costs about a second instead of ten). Marked ``chaos`` (run alone with
``pytest -m chaos``); part of the default run and CI.
"""

import csv

import numpy as np
import pytest

from fedray import api, config
from fedray.client.behaviours import simulated_fault, simulated_host_fault
from fedray.runtime.plan import group_clients
from tests.conftest import ROOT

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.chaos]

BLOBS = ROOT / "experiments" / "blobs.yaml"
BASE = [
    "rounds=20",
    "data.num_samples=6000",
    "strategy.min_fit_clients=1",
    "runtime.progress=false",
    "runtime.max_restarts=-1",
]
PACKED = [*BASE, "data.num_clients=10", "runtime.clients_per_actor=5"]


def schedule(cfg):
    """Every scheduled fault: ``(round, client, cause)`` rows and host re-executions.

    A host fault hits the call of the host serving the client: a crash re-runs that
    call's clients (who then meet their own faults as scheduled), a hang times all of
    them out at the deadline.
    """
    groups = group_clients(cfg.data.num_clients, cfg.runtime.clients_per_actor)
    rows, restarts = [], []
    for r in range(1, cfg.rounds + 1):
        for h, group in enumerate(groups):
            host = [simulated_host_fault(cfg.faults, cfg.seed, r, c) for c in group]
            first = next((k for k in host if k is not None), None)  # planned in id order
            if first == "hang":
                rows += [(r, c, "timeout") for c in group]
                continue
            if first == "crash":  # the re-execution draws no host fault
                restarts.append((r, h))
            own = [(r, c, simulated_fault(cfg.faults, cfg.seed, r, c)) for c in group]
            rows += [(r, c, k) for r, c, k in own if k is not None]
    return sorted(rows), restarts


def failures_csv(run):
    with (run.out_dir / "failures.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def check_counted_as_scheduled(run, overrides, path=BLOBS):
    cfg = config.load(path, overrides)
    rows, restarts = schedule(cfg)
    logged = failures_csv(run)
    faults = sorted((int(r["round"]), int(r["client"]), r["cause"]) for r in logged if r["client"])
    assert faults == rows
    assert [(int(r["round"]), int(r["host"])) for r in logged if not r["client"]] == restarts
    n = cfg.data.num_clients
    for row in run.rows:
        failed = sum(1 for r, _, _ in rows if r == row["round"])
        assert row["clients/failed"] == failed and row["clients/ok"] == n - failed
        assert row.get("hosts/restarted", 0) == sum(1 for r, _ in restarts if r == row["round"])
    return rows, restarts


def test_dedicated_hosts_survive_client_faults_and_host_hangs(tmp_path, numpy_ray_hosts):
    linreg = ROOT / "experiments" / "linreg.yaml"
    common = [
        "rounds=20",
        "data.num_clients=6",
        "strategy.min_fit_clients=1",
        "runtime.clients_per_actor=1",
        "runtime.max_restarts=-1",
        "runtime.progress=false",
    ]
    overrides = [
        *common,
        "faults.crash_rate=0.1",
        "faults.hang_rate=0.05",
        "faults.nan_rate=0.05",
        "faults.host_hang_rate=0.03",
        "runtime.round_timeout_s=6",
    ]
    clean = api.run(linreg, out=tmp_path / "clean", overrides=[*common, "runtime.executor=local"])
    chaos = api.run(linreg, out=tmp_path / "chaos", overrides=overrides)
    rows, _ = check_counted_as_scheduled(chaos, overrides, linreg)
    causes = {c for _, _, c in rows}
    assert causes == {"crash", "hang", "nan", "timeout"}, causes  # every kind happens
    assert len(rows) >= 20
    gap = chaos.final["eval/loss"] - clean.final["eval/loss"]  # the test set's MSE
    assert abs(gap) <= 0.1 * clean.final["eval/loss"], (clean.final, chaos.final)


def test_packed_hosts_lose_only_the_faulty_clients_and_rerun_a_dead_hosts(tmp_path):
    overrides = [
        *PACKED,
        "faults.crash_rate=0.2",
        "faults.host_crash_rate=0.05",
        "faults.hang_rate=0.05",
        "faults.nan_rate=0.05",
    ]
    clean = api.run(BLOBS, out=tmp_path / "clean", overrides=[*PACKED, "runtime.executor=local"])
    chaos = api.run(BLOBS, out=tmp_path / "chaos", overrides=overrides)
    rows, restarts = check_counted_as_scheduled(chaos, overrides)
    assert {c for _, _, c in rows} == {"crash", "hang", "nan"} and len(restarts) >= 3
    gap = clean.final["eval/accuracy"] - chaos.final["eval/accuracy"]
    assert abs(gap) <= 0.02, (clean.final["eval/accuracy"], chaos.final["eval/accuracy"])


@pytest.mark.parametrize("strategy", ["fedavg", "scaffold"])
def test_host_crashes_alone_lose_no_client_and_change_no_weight(
    tmp_path, numpy_ray_hosts, strategy
):
    # SCAFFOLD's control variates live in the hosts: a restarted host reloads its clients'
    # from what it saved at the last checkpoint, on its side, never from the driver.
    linreg = ROOT / "experiments" / "linreg.yaml"
    common = [
        *("rounds=6", "data.num_clients=10", "runtime.clients_per_actor=5"),
        *("runtime.max_restarts=-1", "runtime.progress=false", f"strategy.name={strategy}"),
    ]
    overrides = [*common, "faults.host_crash_rate=0.1"]
    clean = api.run(linreg, out=tmp_path / "clean", overrides=[*common, "runtime.executor=local"])
    crashy = api.run(linreg, out=tmp_path / "crashy", overrides=overrides)
    assert all("node_id" in h for h in crashy.summary["hosts"])  # Ray hosts (numpy, or the
    # weights below would differ from the in-process numpy run's)
    cfg = config.load(linreg, overrides)
    _, restarts = schedule(cfg)
    logged = failures_csv(crashy)
    assert [(int(r["round"]), int(r["host"]), r["cause"]) for r in logged] == [
        (r, h, "host_restart") for r, h in restarts
    ]
    assert len(restarts) >= 3
    for row in crashy.rows:
        assert row["clients/ok"] == 10 and row["clients/failed"] == 0
        assert row.get("hosts/restarted", 0) == sum(1 for r, _ in restarts if r == row["round"])
    for a, b in zip(clean.params, crashy.params, strict=True):  # re-executed: same updates
        np.testing.assert_array_equal(a, b)
