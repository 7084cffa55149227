"""The speed benchmark: correctness only (no timing assertions)."""

import pandas as pd
import pytest

from fedray.bench import speed, speed_report
from fedray.errors import FedrayError


def _raw():
    rows = []
    for rep in range(3):
        for system, round_s, q in [
            ("fedray", 0.01 + rep * 0.001, 1.10),
            ("naive", 1.0 + rep * 0.1, 1.12),
            ("floor", 0.005, None),
        ]:
            rows.append(
                {
                    "workload": "linreg",
                    "clients": 4,
                    "system": system,
                    "repeat": rep,
                    "startup_s": 10.0 if system == "fedray" else 5.0,
                    "round_s": round_s,
                    "cpu_s_per_round": 0.05 if system == "fedray" else 2.0,
                    "peak_pss_mb": 1400.0 if system == "fedray" else 700.0,
                    "quality": q,
                    "quality_metric": None if q is None else "mse",
                }
            )
    return pd.DataFrame(rows)


def test_summary_takes_medians_and_ratios():
    s = speed_report.summarize(_raw()).iloc[0]
    assert s.fedray_round_s == pytest.approx(0.011)
    assert s.naive_round_s == pytest.approx(1.1)
    assert s.speedup_round == pytest.approx(100.0)
    assert s.fedray_over_floor == pytest.approx(2.2)
    assert s.ratio_peak_pss_mb == pytest.approx(2.0)
    assert s.quality_metric == "mse"
    table = speed_report.markdown(speed_report.summarize(_raw()))
    assert "| linreg | 4 | 1.100 | 0.0110 | 100x |" in table


def test_parallel_hosts_follow_auto_packing():
    assert [speed.parallel_hosts(n, 2) for n in (1, 2, 4, 32)] == [1, 2, 2, 2]
    assert speed.parallel_hosts(3, 8) == 3


def test_grid_parsing():
    assert speed._parse_grid(["linreg:2,4", "blobs"]) == {"linreg": [2, 4], "blobs": [4, 8, 32]}
    with pytest.raises(FedrayError, match="unknown workload 'mnist'"):
        speed._parse_grid(["mnist"])
    with pytest.raises(FedrayError, match="--grid 'linreg:two'"):
        speed._parse_grid(["linreg:two"])


@pytest.mark.slow
@pytest.mark.ray
def test_tiny_benchmark_runs_every_system_and_agrees_on_quality(tmp_path, monkeypatch):
    from tests.conftest import ROOT

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(speed, "DEDICATED_MAX_CLIENTS", 1)  # the same code path as fedray's
    summary = speed.run_benchmark(
        grid={"linreg": [2]}, repeats=1, rounds=3, out_dir=tmp_path, timeout_s=300
    )
    raw = pd.read_csv(tmp_path / "speed_raw.csv")
    assert sorted(raw.system) == ["fedray", "floor", "naive"]
    assert (raw.round_s > 0).all() and (raw.startup_s > 0).all()
    trained = raw[raw.system != "floor"]
    assert (trained.peak_pss_mb > 100).all() and (trained.cpu_s_per_round > 0).all()
    row = summary.iloc[0]
    # Same data, init, rounds and seed: the two FedAvg implementations agree on MSE.
    assert row.fedray_quality == pytest.approx(row.naive_quality, rel=0.05)
    assert (tmp_path / "speed.png").stat().st_size > 10_000
    assert (tmp_path / "speed.csv").exists()
