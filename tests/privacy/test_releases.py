"""Invariant 1: every release that leaves a host under DP is charged to the ledger.

The release counter (tests/privacy/harness.py) sees what each client sent, whatever
the code path: sync rounds, retried attempts, resume, pre-aggregated partial sums and
secure aggregation. Paths that cannot be charged (FedBuff, over-commitment, client
evaluations) are refused at config time.
"""

import numpy as np
import pytest

from fedray import config
from fedray.aggregators import CentralDP, LocalDP, Mean
from fedray.callbacks import Callback
from fedray.errors import ConfigError
from fedray.loop import Checkpointer, SyncRounds, run_rounds
from fedray.privacy import DPFedAvgAccountant, DPSGDAccountant, LocalDPAccountant
from fedray.records import RoundPolicy
from fedray.strategy import Strategy, with_dp
from tests.privacy.fakes import EncodingExecutor
from tests.privacy.harness import ReleaseCounter, assert_charged, spy_runs


def _run(agg, ledger, *, rounds=4, fraction=0.5, min_fit=1, flaky=(), resume=None, ckpt=None):
    ex = ReleaseCounter(EncodingExecutor(agg, flaky=flaky))
    if isinstance(agg, CentralDP):
        strategy = with_dp(
            Strategy(aggregator=Mean(weighting="uniform"), fraction_fit=fraction), agg
        )
    else:
        strategy = Strategy(aggregator=agg, fraction_fit=fraction, min_fit_clients=min_fit)
    run_rounds(
        strategy=strategy,
        executor=ex,
        rounds=rounds,
        seed=0,
        callback=Callback(),
        privacy=ledger,
        rng_seed=5,
        scheduler=SyncRounds(RoundPolicy(on_too_few="retry", max_retries=2)),
        resume=resume,
        checkpoint=Checkpointer(ckpt) if ckpt else None,
    )
    return ex


@pytest.mark.slow
def test_central_dp_rounds_are_each_charged_once_per_client():
    ledger = DPFedAvgAccountant(1.0, 0.5, 1e-5)
    ex = _run(CentralDP(noise_multiplier=1.0, expected_clients=3.0, clip=1.0), ledger, rounds=6)
    assert_charged(ex, ledger)
    assert ledger.rounds == 6


def test_failed_attempts_of_local_dp_are_charged_too():
    # Clients 2 and 3 fail in attempt 0 (4 of 6 < 5), so the round retries: 0 releases twice.
    agg = LocalDP(noise_multiplier=2.0, clip=1.0)
    ledger = LocalDPAccountant(noise_multiplier=2.0, delta=1e-5)
    ex = _run(agg, ledger, rounds=1, fraction=1.0, min_fit=5, flaky=(2, 3))
    assert ex.released[0] == 2 and ex.released[2] == 1
    assert_charged(ex, ledger)
    assert ledger.epsilon() == pytest.approx(ledger.client_epsilon(2))


@pytest.mark.slow
def test_failed_attempts_of_dp_sgd_are_charged_too():
    agg = Mean(weighting="uniform")  # DP-SGD noises inside training; the mean is plain
    ledger = DPSGDAccountant(
        noise_multiplier=1.0,
        delta=1e-5,
        batch_size=5,
        local_epochs=1,
        examples=dict.fromkeys(range(6), 50),
    )
    ex = _run(agg, ledger, rounds=3, fraction=1.0, min_fit=6, flaky=(4,))
    assert max(ex.released.values()) == 6  # two attempts in each of three rounds
    assert_charged(ex, ledger)


def test_the_charge_comes_before_the_release_and_covers_clients_that_fail():
    # A mutant that charged after training, only the clients whose updates were kept,
    # passed every test before this one: the log must read record, fit, record, fit,
    # and client 2, which fails in every round, is charged in every round.
    log = []

    class Logged(LocalDPAccountant):
        def record(self, participants, **when):
            log.append(("record", sorted(participants)))
            return super().record(participants, **when)

    class Fits(EncodingExecutor):
        def fit(self, client_ids, params, info):
            log.append(("fit", sorted(client_ids)))
            yield from super().fit(client_ids, params, info)

    ledger = Logged(noise_multiplier=2.0, delta=1e-5)
    ex = ReleaseCounter(Fits(LocalDP(noise_multiplier=2.0, clip=1.0), flaky=(2,)))
    strategy = Strategy(aggregator=LocalDP(noise_multiplier=2.0, clip=1.0), fraction_fit=1.0)
    run_rounds(
        strategy=strategy,
        executor=ex,
        rounds=2,
        seed=0,
        callback=Callback(),
        privacy=ledger,
        rng_seed=5,
        scheduler=SyncRounds(RoundPolicy(on_too_few="skip")),
    )
    everyone = list(range(6))
    assert log == [("record", everyone), ("fit", everyone)] * 2
    assert ex.released[2] == 0 and ledger.participations[2] == 2
    assert_charged(ex, ledger)


def test_a_resumed_run_keeps_charging_on_top_of_the_restored_ledger():
    states = []
    agg = LocalDP(noise_multiplier=3.0, clip=1.0)
    first = LocalDPAccountant(noise_multiplier=3.0, delta=1e-5)
    ex1 = _run(agg, first, rounds=2, ckpt=states.append)
    second = LocalDPAccountant(noise_multiplier=3.0, delta=1e-5)
    ex2 = _run(agg, second, rounds=5, resume=states[-1])
    both = ReleaseCounter(None)
    both.released = ex1.released + ex2.released
    assert_charged(both, second)


@pytest.mark.keras
def test_partial_sums_of_packed_hosts_are_charged(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow")
    seen = spy_runs(monkeypatch)
    hist = _api_run(
        tmp_path, ["privacy.dp.mode=local", "privacy.dp.noise_multiplier=4.0", *RETRIES]
    )
    assert_charged(seen["counters"][0], _ledger_of(seen, hist))


@pytest.mark.keras
def test_dp_sgd_with_crashes_and_retries_is_charged(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow")
    seen = spy_runs(monkeypatch)
    hist = _api_run(
        tmp_path, ["privacy.dp.mode=dpsgd", "privacy.dp.noise_multiplier=1.0", *RETRIES]
    )
    assert any(r.get("round/attempts", 1) > 1 for r in hist.rows)  # retries happened
    assert_charged(seen["counters"][0], _ledger_of(seen, hist))


@pytest.mark.keras
def test_secure_aggregation_with_central_dp_is_charged(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow")
    seen = spy_runs(monkeypatch)
    hist = _api_run(
        tmp_path, ["privacy.dp.noise_multiplier=1.0", "privacy.secure_aggregation.enabled=true"]
    )
    assert any(r.get("agg/secagg/clients", 0) >= 3 for r in hist.rows)
    assert_charged(seen["counters"][0], _ledger_of(seen, hist))


@pytest.mark.parametrize("mode", ["central", "local", "dpsgd"])
@pytest.mark.parametrize(
    "overrides,keys",
    [
        (["strategy.name=fedbuff"], "strategy.name='fedbuff'"),
        (["strategy.over_commit=0.5"], "strategy.over_commit=0.5"),
        (["evaluation.train_every=1"], "evaluation.train_every=1"),
        (["evaluation.federated_every=2"], "evaluation.federated_every=2"),
    ],
)
def test_paths_that_cannot_be_charged_are_refused_naming_both_keys(mode, overrides, keys):
    dp = [f"privacy.dp.mode={mode}", "privacy.dp.noise_multiplier=1.0", "privacy.dp.delta=1e-5"]
    with pytest.raises(ConfigError) as err:
        config.load({"data": {"num_clients": 8}}, [*dp, *overrides])
    line = str(err.value)
    assert f"privacy.dp.mode='{mode}' does not work with {keys}" in line and "\n" not in line


RETRIES = [
    "strategy.fraction_fit=1.0",
    "strategy.min_fit_clients=5",
    "strategy.max_retries=5",
    "strategy.on_too_few=retry",
    "faults.crash_rate=0.2",
]

# --- helpers for the end-to-end cases: the real LocalExecutor, wrapped ----------------

LINREG = [
    "rounds=4",
    "data.dataset=linreg",
    "data.num_clients=6",
    "strategy.fraction_fit=0.5",
    "privacy.dp.delta=1e-5",
    "privacy.dp.clip=5.0",
    "privacy.dp.noise_seed=1",
    "runtime.executor=local",
    "runtime.clients_per_actor=3",
    "runtime.progress=false",
    "checkpoint.every=0",
]


def _api_run(tmp_path, overrides):
    from fedray import api

    return api.run({}, out=tmp_path, overrides=[*LINREG, *overrides])


def _ledger_of(seen, hist):
    ledger = seen["ledgers"][-1]
    assert ledger is not None and np.isfinite(hist.summary["privacy"]["epsilon"])
    return ledger


DP_CENTRAL = ["privacy.dp.mode=central", "privacy.dp.noise_multiplier=1.0", "privacy.dp.delta=1e-5"]


@pytest.mark.parametrize(
    "overrides,keys",
    [
        (
            ["privacy.secure_aggregation.enabled=true", "evaluation.federated_every=1"],
            "privacy.secure_aggregation.enabled=True does not work with "
            "evaluation.federated_every=1",
        ),
        (
            ["privacy.secure_aggregation.enabled=true", "evaluation.train_every=1"],
            "privacy.secure_aggregation.enabled=True does not work with evaluation.train_every=1",
        ),
        (
            [*DP_CENTRAL, "strategy.norm_bound=1.0"],
            "privacy.dp.mode='central' does not work with strategy.norm_bound=1.0",
        ),
        (
            [*DP_CENTRAL, "strategy.max_update_norm=5"],
            "privacy.dp.mode='central' does not work with strategy.max_update_norm=5.0",
        ),
    ],
)
def test_releases_of_un_noised_client_statistics_are_refused(overrides, keys):
    # Secure aggregation's server learns only sums: no per-client evaluation in the clear.
    # Central DP's clients already clip: a norm bound would only log un-noised statistics.
    with pytest.raises(ConfigError) as err:
        config.load({"data": {"num_clients": 8}}, overrides)
    assert keys in str(err.value) and "\n" not in str(err.value)


def test_a_hand_composed_norm_bound_around_central_dp_is_refused_too():
    from fedray.aggregators import NormBound
    from fedray.strategy.rules import check_compatible, strategy_features

    strategy = Strategy(aggregator=NormBound(CentralDP(1.0, 4.0, clip=1.0), max_norm=0.5))
    with pytest.raises(ConfigError, match="privacy.dp.mode='central' does not work with strategy"):
        check_compatible(strategy_features(strategy))
