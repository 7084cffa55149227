"""Scale: pre-aggregation in hosts, sampling by clients_per_round, fixed-total synthetic data."""

import numpy as np
import pandas as pd
import pytest

from fedray import api, config
from fedray.aggregators import Mean, Median
from fedray.bench import scale
from fedray.data import load_dataset, partition_indices
from fedray.data.partition import column
from fedray.errors import ConfigError, FedrayError
from fedray.records import ClientFailure, ClientUpdate, PartialSum, RoundInfo
from fedray.strategy import Strategy
from tests.conftest import ROOT

SCALE = ROOT / "experiments" / "scale.yaml"


def _local(n, *extra):
    return [
        f"data.num_clients={n}",
        "data.num_samples=3000",
        "runtime.executor=local",
        "runtime.progress=false",
        *extra,
    ]


@pytest.mark.keras
def test_pre_aggregated_run_equals_a_run_that_aggregates_every_update(tmp_path):
    common = _local(24, "rounds=2", "runtime.clients_per_actor=12", "faults.nan_rate=0.2")
    on = api.run(SCALE, out=tmp_path / "on", overrides=[*common, "runtime.pre_aggregate=true"])
    off = api.run(SCALE, out=tmp_path / "off", overrides=[*common, "runtime.pre_aggregate=false"])
    for a, b in zip(on.params, off.params, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    for a, b in zip(on.rows, off.rows, strict=True):
        assert (a["clients/ok"], a["clients/failed"]) == (b["clients/ok"], b["clients/failed"])
        assert a["fit/loss"] == pytest.approx(b["fit/loss"], rel=1e-6)
        assert a["eval/loss"] == pytest.approx(b["eval/loss"], rel=1e-5)
    assert sum(r["clients/failed"] for r in on.rows) > 0  # the NaN clients were rejected


@pytest.mark.keras
def test_hosts_send_one_partial_sum_and_every_failure():
    from fedray.runtime.local import LocalExecutor

    cfg = config.load(SCALE, _local(12, "faults.nan_rate=0.3"))
    ex = LocalExecutor(cfg, Mean(), clients_per_host=6, pre_aggregate=True)
    params = ex.initial_params()
    results = list(ex.fit(range(12), ex.broadcast(params), RoundInfo(1, 0, num_sampled=12)))
    sums = [r for r in results if isinstance(r, PartialSum)]
    failed = [r for r in results if isinstance(r, ClientFailure)]
    assert len(sums) == 2 and not any(isinstance(r, ClientUpdate) for r in results)
    assert all("NaN" in f.reason for f in failed) and failed
    ids = sorted([c for s in sums for c in s.client_ids] + [f.client_id for f in failed])
    assert ids == list(range(12))
    with pytest.raises(
        ValueError,
        match=r"pre_aggregate needs a linear aggregator \(a LinearAggregator\), got Median",
    ):
        LocalExecutor(cfg, Median(), pre_aggregate=True)


@pytest.mark.keras
def test_clients_per_round_samples_exactly_k_each_round(tmp_path):
    hist = api.run(
        SCALE,
        out=tmp_path,
        overrides=_local(200, "rounds=3", "strategy.clients_per_round=17"),
    )
    assert [r["clients/sampled"] for r in hist.rows] == [17, 17, 17]
    assert [r["clients/ok"] for r in hist.rows] == [17, 17, 17]


def test_sampling_follows_its_fraction():
    cfg = config.load(SCALE, ["data.num_clients=1000", "strategy.clients_per_round=100"])
    assert cfg.strategy.fraction_fit == pytest.approx(0.1)
    strategy = Strategy(fraction_fit=cfg.strategy.fraction_fit)
    rng = np.random.default_rng(0)
    counts = np.zeros(1000)
    for _ in range(400):
        ids = strategy.sample_clients(1000, rng)
        assert len(ids) == len(set(ids)) == 100
        counts[ids] += 1
    # Each client joins a round with probability 0.1: Binomial(400, 0.1) per client,
    # mean 40, variance 36 (sampling without replacement inside a round lowers it by
    # a factor 999/900... negligible here).
    assert counts.mean() == pytest.approx(40.0)
    assert 30 < counts.var() < 43
    poisson = Strategy(fraction_fit=0.1, sampling="poisson")
    sizes = [len(poisson.sample_clients(1000, rng)) for _ in range(400)]
    assert np.mean(sizes) == pytest.approx(100, abs=2)  # E = qN; sd of the mean 0.47


def test_clients_per_round_errors_name_the_values():
    with pytest.raises(ConfigError, match="clients_per_round=50 exceeds data.num_clients=10"):
        config.load(SCALE, ["data.num_clients=10", "strategy.clients_per_round=50"])
    with pytest.raises(ConfigError, match="clients_per_round=5 or strategy.fraction_fit=0.5"):
        config.load(SCALE, ["strategy.clients_per_round=5", "strategy.fraction_fit=0.5"])


@pytest.mark.slow
@pytest.mark.parametrize("clients", [10, 1000, 10_000])
def test_synthetic_total_rows_stay_fixed_however_many_clients(clients):
    cfg = config.load(SCALE, [f"data.num_clients={clients}", "data.num_samples=50000"])
    ds = load_dataset(cfg.data, cfg.seed)
    assert len(ds.x_train) + len(ds.x_test) == 50_000
    parts = partition_indices(ds, cfg.data, cfg.seed)
    assert len(parts) == clients and min(len(p) for p in parts) >= 1
    assert sum(len(p) for p in parts) == len(ds.x_train)


def test_column_partition_matches_one_scan_per_value():
    values = np.random.default_rng(0).integers(0, 300, 5000)
    parts, keys = column(values)
    for k, p in zip(keys, parts, strict=True):
        np.testing.assert_array_equal(p, np.flatnonzero(values == k))


def test_scale_summary_overhead_and_tables():
    rows = []
    for system, round_s in [("fedray", 0.5), ("floor", 0.3), ("naive", 40.0)]:
        rows.append(
            {
                "registered": 1000,
                "sampled": 100,
                "system": system,
                "repeat": 0,
                "round_s": round_s,
                "startup_s": 9.0,
                "peak_pss_mb": 1536.0,
                "quality": 0.5,
            }
        )
    s = scale.summarize(pd.DataFrame(rows)).iloc[0]
    assert s.overhead_ms_per_client == pytest.approx(2.0)  # (0.5 - 0.3) s / 100 clients
    assert s.naive_round_s == 40.0
    table = scale.markdown(scale.summarize(pd.DataFrame(rows)))
    assert "| 1,000 | 100 | 0.500 | 0.300 | 2.00 | 9.0 | 1.50 | 40.00 | – |" in table
    assert scale.systems(10, 10) == ["fedray", "floor", "fedray_dedicated", "naive"]
    assert scale.systems(10_000, 1000) == ["fedray", "floor"]
    assert scale.overrides(1000, 1000, 5)[-1] == "runtime.progress=false"
    assert "strategy.clients_per_round=10" in scale.overrides(1000, 10, 5)
    with pytest.raises(FedrayError, match="K=20 exceeds N=10"):
        scale._parse_point("10:20")


def test_the_million_client_point_sets_its_rows_and_runs_fedray_alone():
    assert (1_000_000, 100, 10_000_000) in scale.GRID
    assert scale.systems(1_000_000, 100) == ["fedray"]
    over = scale.overrides(1_000_000, 100, 6, 10_000_000)
    assert "data.num_samples=10000000" in over and "strategy.clients_per_round=100" in over
    rows = [
        {
            "registered": 1_000_000,
            "sampled": 100,
            "rows": 10_000_000,
            "system": "fedray",
            "repeat": 0,
            "round_s": 0.05,
            "startup_s": 45.0,
            "peak_pss_mb": 10240.0,
            "quality": 0.1,
        }
    ]
    table = scale.markdown(scale.summarize(pd.DataFrame(rows)))
    assert "| 1,000,000 (10,000,000 rows) | 100 | 0.050 | – | – | 45.0 | 10.00 | – | – |" in table
    with pytest.raises(FedrayError, match="expected N:K or N:K:ROWS"):
        scale._parse_point("10:5:x")


def test_synthetic_total_too_small_names_the_minimum():
    from fedray.errors import DataError

    cfg = config.load(SCALE, ["data.num_clients=1000", "data.num_samples=1500"])
    with pytest.raises(DataError, match="num_samples=1500 is too small for 1000 .* \\(2000\\)"):
        load_dataset(cfg.data, cfg.seed)


@pytest.mark.ray
@pytest.mark.slow
def test_multinode_run_spreads_hosts_and_reports_who_ran_which_clients(monkeypatch):
    monkeypatch.chdir(ROOT)
    res = scale.run_multinode(scale.CONFIG, scale.overrides(40, 40, 2), nodes=2)
    placed = res["placement"]
    assert sorted(p["node"] for p in placed) == ["head", "node-1"]  # one host per node
    assert sum(p["clients"] for p in placed) == 40
    assert sorted((p["first_client"], p["last_client"]) for p in placed) == [(0, 19), (20, 39)]
    assert res["round_s"] > 0
