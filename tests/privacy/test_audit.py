"""Invariant 5: the audit says what it measures (no multiple-testing error; canaries)."""

import numpy as np
import pytest

from fedray.privacy.audit import epsilon_lower_bound


@pytest.mark.slow
def test_the_lower_bound_is_positive_at_most_alpha_of_the_time_under_the_null():
    rng = np.random.default_rng(1)
    trials = 1000
    hits = sum(
        epsilon_lower_bound(rng.normal(0, 1, 1000), rng.normal(0, 1, 1000), 1e-5) > 0
        for t in range(trials)
    )
    assert hits / trials <= 0.05


def test_the_lower_bound_still_detects_real_leakage():
    rng = np.random.default_rng(2)
    members, nonmembers = rng.normal(2.0, 1.0, 1000), rng.normal(0.0, 1.0, 1000)
    lb = epsilon_lower_bound(members, nonmembers, 1e-5)
    # Two unit Gaussians 2 apart are a Gaussian mechanism with multiplier 0.5 (ε ≈ 9 at
    # δ = 1e-5); 500 held-out scores per side can prove a clearly positive fraction of it.
    assert 1.0 < lb < 9.0


def test_canary_estimate_matches_a_gaussian_mechanism():
    import dp_accounting as dpa

    from fedray.privacy.audit import canary_epsilon

    rng = np.random.default_rng(3)
    inserted, held_out = rng.normal(0.3, 0.1, 5000), rng.normal(0.0, 0.1, 5000)
    est = canary_epsilon(inserted, held_out, 1e-5)
    want = dpa.get_epsilon_gaussian(0.1 / 0.3, 1e-5)
    assert est["epsilon"] == pytest.approx(want, rel=0.05)
    assert canary_epsilon(held_out[:100], held_out[100:200], 1e-5)["epsilon"] < 1.0


@pytest.mark.keras
def test_canary_audit_run_reports_a_client_level_estimate(tmp_path):
    pytest.importorskip("tensorflow")
    from fedray import api

    common = {
        "rounds": 6,
        "data": {"dataset": "blobs", "num_clients": 20, "num_samples": 400},
        "model": {"name": "linear"},
        "strategy": {"fraction_fit": 0.5},
        "runtime": {"executor": "local", "progress": False, "clients_per_actor": 20},
        "checkpoint": {"every": 0},
    }
    canaries = {"canaries": {"count": 50, "held_out": 50}}
    plain = api.run({**common, "privacy": canaries}, out=tmp_path / "plain")
    noised = api.run(
        {
            **common,
            "privacy": {**canaries, "dp": {"noise_multiplier": 5.0, "delta": 1e-5, "clip": 1.0}},
        },
        out=tmp_path / "dp",
    )
    a, b = plain.summary["canaries"], noised.summary["canaries"]
    assert a["inserted"] == 50 and a["held_out"] == 50
    assert a["mu"] > 3 * a["sigma"] / 50**0.5  # without DP the canaries clearly show
    assert a["epsilon"] > b["epsilon"]  # noise hides them
    assert abs(a["cos_held_out_mean"]) < 4 * a["sigma"] / 50**0.5  # held out: no signal
