"""Invariant 3: the ledger prices what really ran; resume never re-prices the past."""

import math

import dp_accounting as dpa
import numpy as np
import pytest
from dp_accounting import pld, rdp

from fedray.privacy import DPFedAvgAccountant, DPSGDAccountant, LocalDPAccountant


@pytest.mark.slow
def test_heterogeneous_rounds_compose_as_dp_accounting_does():
    ledger = DPFedAvgAccountant(2.0, 0.5, 1e-5)
    ledger.record([])
    ledger.record([])
    ledger.noise_multiplier = 3.0  # e.g. an extended run recalibrated its z
    for _ in range(4):
        ledger.record([])
    ref = rdp.RdpAccountant()
    ref.compose(dpa.PoissonSampledDpEvent(0.5, dpa.GaussianDpEvent(2.0)), 2)
    ref.compose(dpa.PoissonSampledDpEvent(0.5, dpa.GaussianDpEvent(3.0)), 4)
    assert ledger.epsilon() == pytest.approx(ref.get_epsilon(1e-5), rel=1e-9)
    ref_pld = pld.PLDAccountant()
    ref_pld.compose(dpa.PoissonSampledDpEvent(0.5, dpa.GaussianDpEvent(2.0)), 2)
    ref_pld.compose(dpa.PoissonSampledDpEvent(0.5, dpa.GaussianDpEvent(3.0)), 4)
    assert ledger.epsilon(method="pld") == pytest.approx(ref_pld.get_epsilon(1e-5), rel=1e-6)
    # The checkpointed state brings the same past back, whatever z the new run has.
    again = DPFedAvgAccountant(9.0, 0.5, 1e-5)
    again.restore(ledger.state())
    assert again.epsilon() == ledger.epsilon() and again.rounds == 6


def test_local_dp_precision_composes_releases_of_different_noise():
    ledger = LocalDPAccountant(noise_multiplier=4.0, delta=1e-5)
    ledger.record([0, 1])
    ledger.noise_multiplier = 8.0
    ledger.record([0])
    # Client 0: releases with multipliers 4/2 and 8/2 on sensitivity 2C.
    want = dpa.get_epsilon_gaussian((2.0**-2 + 4.0**-2) ** -0.5, 1e-5)
    assert ledger.epsilon() == pytest.approx(want)
    back = LocalDPAccountant(noise_multiplier=1.0, delta=1e-5)
    back.restore(ledger.state())
    assert back.epsilon() == pytest.approx(want)


@pytest.mark.keras
def test_resume_extending_a_target_epsilon_run_reports_what_ran(tmp_path):
    pytest.importorskip("tensorflow")
    from fedray import api
    from fedray.config import build

    cfg = {
        "rounds": 2,
        "data": {"dataset": "linreg", "num_clients": 8},
        "strategy": {"fraction_fit": 0.25},  # q = 0.5 makes dp-accounting's RDP slow
        "privacy": {"dp": {"target_epsilon": 2.0, "delta": 1e-5}},
        "runtime": {"executor": "local", "progress": False, "clients_per_actor": 8},
    }
    h1 = api.run(cfg, out=tmp_path)
    z1 = h1.summary["privacy"]["noise_multiplier"]
    h2 = api.run(cfg, out=tmp_path, overrides=["rounds=6"], resume=True)
    p = h2.summary["privacy"]
    events = [(e["noise_multiplier"], e["rounds"]) for e in p["events"]]
    assert events[0] == (z1, 2) and sum(n for _, n in events) == 6
    z2 = p["noise_multiplier"]
    ref = rdp.RdpAccountant()
    ref.compose(dpa.PoissonSampledDpEvent(0.25, dpa.GaussianDpEvent(z1)), 2)
    ref.compose(dpa.PoissonSampledDpEvent(0.25, dpa.GaussianDpEvent(z2)), 4)
    assert p["epsilon_rdp"] == pytest.approx(ref.get_epsilon(1e-5), rel=1e-9)
    assert p["epsilon_rdp"] <= 2.0  # the extension was calibrated on top of the past
    # Resuming the same run (same rounds) reuses its z exactly.
    from fedray import config
    from fedray.loop import checkpoint

    state = checkpoint.load(
        tmp_path, config_fingerprint=checkpoint.fingerprint(config.load(cfg).to_dict())
    )
    again = config.load(cfg, ["rounds=6"])
    assert build.noise_multiplier(again, state.loop_state["privacy"]) == z2


def test_dp_sgd_batch_cap_tail_is_spent_from_delta():
    from fedray.privacy import (
        RoundEvent,
        compose_epsilon,
        poisson_batch_cap,
        truncation_probability,
    )

    for batch in (16, 64, 256):
        cap = poisson_batch_cap(batch)
        for n in (batch, 4 * batch, 60_000):
            assert truncation_probability(n, batch, cap) <= 1e-12
    ledger = DPSGDAccountant(
        noise_multiplier=1.1,
        delta=1e-5,
        batch_size=256,
        local_epochs=60,
        examples={0: 60_000},
        cap=341,
    )
    ledger.record([0])
    steps = 60 * math.ceil(60_000 / 256)
    spent = steps * truncation_probability(60_000, 256, 341)
    assert spent > 1e-5  # the old cap (B + 5 sqrt(B) + 5) spent more than all of δ ...
    assert ledger.epsilon() == math.inf  # ... so no ε can be claimed at this δ
    ledger.cap = None  # today's cap
    assert ledger.report()["delta_truncation"] < 1e-7
    assert ledger.epsilon() == pytest.approx(
        compose_epsilon([(RoundEvent(1.1, None, 256 / 60_000), steps)], 1e-5), rel=1e-3
    )


def test_delta_at_or_above_one_over_n_is_warned(caplog):
    from fedray import config
    from fedray.config import build

    cfg = config.load(
        {"data": {"num_clients": 10}, "privacy": {"dp": {"noise_multiplier": 1.0, "delta": 0.5}}}
    )
    build.warn_on_delta(cfg)
    assert "privacy.dp.delta=0.5 is not well below 1 / data.num_clients" in caplog.text
    caplog.clear()
    build.warn_on_delta(config.load(cfg.to_dict(), ["privacy.dp.delta=1e-5"]))
    assert not caplog.text


@pytest.mark.slow
def test_accountant_q_and_z_are_not_swapped():
    from fedray.privacy import dpfedavg_epsilon

    ledger = DPSGDAccountant(
        noise_multiplier=1.3, delta=1e-5, batch_size=8, local_epochs=2, examples={5: 100}
    )
    ledger.record([5])
    assert ledger.epsilon() == pytest.approx(
        dpfedavg_epsilon(1.3, 8 / 100, 2 * math.ceil(100 / 8), 1e-5), rel=1e-9
    )
    assert ledger.epsilon() != pytest.approx(dpfedavg_epsilon(8 / 100, 1.3 / 10, 26, 1e-5))


@pytest.mark.slow
@pytest.mark.parametrize("delta", [1e-3, 1e-6, 1e-8])
def test_epsilon_depends_on_delta_as_dp_accounting_says(delta):
    from fedray.privacy import dpfedavg_epsilon

    ref = rdp.RdpAccountant()
    ref.compose(dpa.PoissonSampledDpEvent(0.05, dpa.GaussianDpEvent(1.2)), 300)
    assert dpfedavg_epsilon(1.2, 0.05, 300, delta) == pytest.approx(ref.get_epsilon(delta))
    ref_pld = pld.PLDAccountant()
    ref_pld.compose(dpa.PoissonSampledDpEvent(0.05, dpa.GaussianDpEvent(1.2)), 300)
    assert dpfedavg_epsilon(1.2, 0.05, 300, delta, method="pld") == pytest.approx(
        ref_pld.get_epsilon(delta), rel=1e-6
    )
    assert np.isfinite(dpfedavg_epsilon(1.2, 0.05, 300, delta))


def test_a_target_epsilon_is_also_the_ledgers_budget():
    from fedray import config
    from fedray.config import build

    cfg = config.load(
        {
            "data": {"num_clients": 10},
            "privacy": {"dp": {"mode": "local", "target_epsilon": 3.0, "delta": 1e-5}},
        }
    )
    assert build.budget(cfg) == pytest.approx(3.0)
    from types import SimpleNamespace

    hosts = SimpleNamespace(num_clients=10, host_info=[])
    ledger = build.ledger(cfg, build.build_strategy(cfg), hosts)
    for _ in range(cfg.rounds):  # the planned rounds fit exactly ...
        assert ledger.allows_next_round()
        ledger.record([0])
    assert ledger.epsilon() == pytest.approx(3.0)
    assert not ledger.allows_next_round()  # ... and a retry's extra release would not
    explicit = config.load(cfg.to_dict(), ["privacy.dp.max_epsilon=2.0"])
    assert build.budget(explicit) == 2.0


def test_epsilon_is_composed_once_per_distinct_history(monkeypatch):
    """A report, the planner and a resume ask for the same ε: dp-accounting runs once.

    A distinct history (another z, count, δ or method) is composed afresh, so the memo
    can never answer for rounds it has not seen.
    """
    from fedray.privacy import accounting

    calls = []
    real = accounting._accountant
    monkeypatch.setattr(accounting, "_accountant", lambda *a: calls.append(a) or real(*a))
    e = accounting.RoundEvent(1.7, None, 0.013)  # values no other test composes
    first = accounting.compose_epsilon([(e, 37)], 1e-5)
    assert accounting.compose_epsilon([(e, 37)], 1e-5) == first and len(calls) == 1
    assert accounting.compose_epsilon([(e, 38)], 1e-5) > first and len(calls) == 2
    assert accounting.compose_epsilon([(e, 37)], 1e-6) > first and len(calls) == 3
    z = accounting.dpfedavg_epsilon(1.7, 0.013, 37, 1e-5)
    assert z == pytest.approx(first) and accounting.dpfedavg_epsilon(1.7, 0.013, 37, 1e-5) == z
    assert len(calls) == 4


# --- three privacy numbers that slow tests alone guarded (mutation testing) -----------


def test_fixed_size_sampling_is_accounted_at_sensitivity_two_c():
    from fedray.privacy import round_event

    fixed = round_event(2.0, 0.01, sampling="fixed", population=1000)
    assert isinstance(fixed, dpa.SampledWithoutReplacementDpEvent)
    assert (fixed.source_dataset_size, fixed.sample_size) == (1000, 10)
    assert fixed.event.noise_multiplier == 1.0  # replace-one: the sum moves by 2C
    poisson = round_event(2.0, 0.01)
    assert isinstance(poisson, dpa.PoissonSampledDpEvent)
    assert poisson.event.noise_multiplier == 2.0


@pytest.mark.parametrize("target", [0.5, 2.0, 8.0])
def test_calibration_returns_a_z_that_meets_the_target(target):
    from fedray.privacy import calibrate_noise_multiplier, dpfedavg_epsilon

    z = calibrate_noise_multiplier(target, 1.0, 3, 1e-5)
    assert dpfedavg_epsilon(z, 1.0, 3, 1e-5) <= target
    # ... and is the smallest such z within the tolerance (1e-3).
    assert dpfedavg_epsilon(z - 2e-3, 1.0, 3, 1e-5) > target


def test_the_budget_check_prices_the_next_round():
    from fedray.privacy import dpfedavg_epsilon

    one, two = (dpfedavg_epsilon(2.0, 1.0, r, 1e-5) for r in (1, 2))
    ledger = DPFedAvgAccountant(2.0, 1.0, 1e-5, max_epsilon=(one + two) / 2)
    assert ledger.allows_next_round()  # round 1 costs `one`, within the budget
    ledger.record([0])
    assert ledger.epsilon() == pytest.approx(one)
    assert not ledger.allows_next_round()  # round 2 would cost `two`, over it
    local = LocalDPAccountant(noise_multiplier=2.0, delta=1e-5)
    local.max_epsilon = (local.client_epsilon(1) + local.client_epsilon(2)) / 2
    local.record([0])
    assert not local.allows_next_round()
