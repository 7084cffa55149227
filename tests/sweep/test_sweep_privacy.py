"""A sweep under DP reports the composition of all its trials, not the best trial's ε.

The sweep ranks K trials trained on the same clients and the table puts the best first:
releasing that model costs every trial's releases composed (the review's BUG-4: 5.97
reported for the best trial, 16.29 for the eight together).
"""

import json

import dp_accounting as dpa
import pytest
from dp_accounting import pld, rdp

from fedray import api, sweeps

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("numpy_hosts")]  # numpy hosts

CONFIG = {
    "data": {"dataset": "linreg", "num_clients": 40},
    "rounds": 10,
    "strategy": {"fraction_fit": 0.25},
    "privacy": {"dp": {"noise_multiplier": 1.0, "delta": 1e-5}},
    "runtime": {"executor": "local", "progress": False},
    "checkpoint": {"every": 0},
}


def _run_trials(out, plan):
    """Each trial as ``sweeps.tune._trial`` runs it, in-process instead of on Ray Tune."""
    for t in plan.trials:
        api.run(CONFIG, out=sweeps.run_dir(out, t.name), overrides=t.overrides)


def _epsilon_of_all(out, plan, acc):
    """dp-accounting's ε of every trial's rounds, from their summaries."""
    for t in plan.trials:
        summary = json.loads((sweeps.run_dir(out, t.name) / "summary.json").read_text())
        for e in summary["privacy"]["events"]:
            event = dpa.GaussianDpEvent(e["noise_multiplier"])
            acc.compose(dpa.PoissonSampledDpEvent(e["sampling_rate"], event), e["rounds"])
    return acc.get_epsilon(1e-5)


def test_the_sweep_reports_every_trials_releases_composed(tmp_path, caplog):
    grid = {"client.learning_rate": [0.01, 0.05, 0.1, 0.2]}
    plan = sweeps.plan(CONFIG, grid, seeds=2, metric="eval/loss", mode="min")
    plan.save(tmp_path)
    _run_trials(tmp_path, plan)
    df = sweeps.write(tmp_path)
    want = _epsilon_of_all(tmp_path, plan, rdp.RdpAccountant())  # the runs' own accountant
    assert df["sweep_epsilon"].iloc[0] == pytest.approx(want, rel=1e-9)
    assert (df["sweep_epsilon"] > 2 * df["epsilon"]).all()  # far above any one trial
    saved = json.loads((tmp_path / sweeps.PLAN).read_text())["extra"]["privacy"]
    assert saved["epsilon"] == pytest.approx(want) and saved["runs"] == 8
    assert saved["composition"] == "joint" and saved["accountant"] == "RDP"
    tight = _epsilon_of_all(tmp_path, plan, pld.PLDAccountant())  # the review's 16.29
    assert saved["epsilon_pld"] == pytest.approx(tight, rel=1e-6) and tight < want
    caption = sweeps.summary_table(df).caption
    assert f"sweep ε = {want:.4g}" in caption and "best one included" in caption


def test_a_failed_trial_s_releases_count_too(tmp_path):
    grid = {"client.learning_rate": [0.01, 0.05]}
    plan = sweeps.plan(CONFIG, grid, seeds=1)
    plan.save(tmp_path)
    _run_trials(tmp_path, plan)
    complete = sweeps.privacy(tmp_path)["epsilon"]
    # A third trial crashed after 3 rounds: no summary, but its journal has its charges.
    extra = sweeps.run_dir(tmp_path, "t002")
    api.run({**CONFIG, "rounds": 3}, out=extra)
    (extra / "summary.json").unlink()
    plan = sweeps.plan(CONFIG, {"client.learning_rate": [0.01, 0.05, 0.1]}, seeds=1)
    plan.save(tmp_path)
    with_failed = sweeps.privacy(tmp_path)
    assert with_failed["runs"] == 3 and with_failed["epsilon"] > complete
