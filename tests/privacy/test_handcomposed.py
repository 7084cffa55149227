"""Invariant: a DP mechanism given by hand (``strategy=``) is charged as the configured one.

Whether a run is private is decided by the composed strategy's mechanisms, not by the
config: the same mechanism given only through ``fedray.run(strategy=...)`` reports the
same ε as the configured run, or the run is refused in one line; and its noise never
comes from the public seed.
"""

import numpy as np
import pytest

from fedray import api
from fedray.aggregators import AdaptiveClip, CentralDP, DistributedDP, LocalDP, Mean
from fedray.errors import ConfigError
from fedray.privacy import DPSGD
from fedray.strategy import ClientOptions, Strategy, fedavg, with_dp

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("numpy_hosts")]  # numpy hosts

BASE = {
    "rounds": 3,
    "seed": 7,
    "data": {"dataset": "linreg", "num_clients": 20},
    "runtime": {"executor": "local", "progress": False},
    "checkpoint": {"every": 0},
}
DELTA = {"privacy": {"dp": {"delta": 1e-5}}}
SEEDED = {"privacy": {"dp": {"delta": 1e-5, "noise_seed": 3}}}  # the same samples in both


def _run(tmp_path, name, config, strategy=None):
    return api.run({**BASE, **config}, out=tmp_path / name, strategy=strategy)


def _dp(**kw):
    return {"privacy": {"dp": {"delta": 1e-5, "noise_seed": 3, **kw}}}


CASES = {
    "central": (
        with_dp(fedavg(fraction_fit=0.25, weighting="uniform"), CentralDP(1.0, 5.0, clip=1.0)),
        {"strategy": {"fraction_fit": 0.25}, **_dp(noise_multiplier=1.0)},
    ),
    "central adaptive": (
        with_dp(
            fedavg(fraction_fit=0.5, weighting="uniform"),
            CentralDP(1.0, 10.0, clip=AdaptiveClip(count_stddev=2.0)),
        ),
        {
            "strategy": {"fraction_fit": 0.5},
            **_dp(noise_multiplier=1.0, clip="adaptive", count_stddev=2.0),
        },
    ),
    "local": (
        with_dp(fedavg(fraction_fit=0.25, weighting="uniform"), LocalDP(2.0, clip=1.0)),
        {"strategy": {"fraction_fit": 0.25}, **_dp(noise_multiplier=2.0, mode="local")},
    ),
    "dpsgd": (
        Strategy(
            aggregator=Mean(weighting="uniform"),
            client=ClientOptions(dp_sgd=DPSGD(1.0, clip=1.0)),
            fraction_fit=0.5,
        ),
        {"strategy": {"fraction_fit": 0.5}, **_dp(noise_multiplier=1.0, mode="dpsgd")},
    ),
}


@pytest.mark.parametrize("mode", list(CASES))
def test_a_hand_composed_mechanism_reports_the_configured_epsilon(tmp_path, mode):
    strategy, config = CASES[mode]
    by_hand = _run(tmp_path, "hand", SEEDED, strategy)
    configured = _run(tmp_path, "config", config)
    mine, theirs = by_hand.summary["privacy"], configured.summary["privacy"]
    assert mine is not None and mine["mode"] == theirs["mode"] == mode.split()[0]
    assert mine["epsilon"] == pytest.approx(theirs["epsilon"], rel=1e-9)
    assert np.isfinite(mine["epsilon"]) and mine["epsilon"] > 0
    assert [r["privacy/epsilon"] for r in by_hand.rows] == pytest.approx(
        [r["privacy/epsilon"] for r in configured.rows], rel=1e-9
    )


def test_distributed_dp_by_hand_is_charged_as_configured(tmp_path):
    secagg = {"secure_aggregation": {"enabled": True}}
    mech = DistributedDP(0.7, expected_clients=10.0, population=20, clip=1.0, bits=22)
    strategy = with_dp(fedavg(fraction_fit=0.5, weighting="uniform"), mech)
    hand = _run(tmp_path, "hand", {"privacy": {**SEEDED["privacy"], **secagg}}, strategy)
    conf = {"strategy": {"fraction_fit": 0.5}}
    dp = {"delta": 1e-5, "noise_seed": 3, "mode": "distributed", "noise_multiplier": 0.7}
    configured = _run(tmp_path, "config", {**conf, "privacy": {"dp": dp, **secagg}})
    assert hand.summary["privacy"]["epsilon"] == pytest.approx(
        configured.summary["privacy"]["epsilon"], rel=1e-9
    )


@pytest.mark.parametrize("mode", ["central", "local", "dpsgd"])
def test_a_hand_composed_mechanism_without_a_delta_is_refused_in_one_line(tmp_path, mode):
    strategy, _ = CASES[mode]
    with pytest.raises(ConfigError) as err:
        _run(tmp_path, "run", {}, strategy)
    line = str(err.value)
    assert "\n" not in line and "needs a δ: set privacy.dp.delta" in line
    assert not (tmp_path / "run" / "metrics.csv").exists()


def test_a_second_mechanism_from_the_config_is_refused_in_one_line(tmp_path):
    strategy, _ = CASES["central"]
    with pytest.raises(ConfigError, match=r"privacy.dp.noise_multiplier=1.0 does not work with "):
        _run(tmp_path, "run", _dp(noise_multiplier=1.0), strategy)
    with pytest.raises(ConfigError, match=r"privacy.dp.mode='local' does not work with "):
        _run(tmp_path, "run", _dp(mode="local"), strategy)
    two = Strategy(
        aggregator=LocalDP(1.0), client=ClientOptions(dp_sgd=DPSGD(1.0)), fraction_fit=0.5
    )
    with pytest.raises(ConfigError, match=r"two DP mechanisms \(LocalDP and DPSGD\)"):
        _run(tmp_path, "run", DELTA, two)


@pytest.mark.parametrize("mode", ["central", "local"])
def test_the_same_public_seed_never_gives_the_same_noised_model(tmp_path, mode):
    strategy, config = CASES[mode]
    unseeded = {
        "privacy": {"dp": {k: v for k, v in config["privacy"]["dp"].items() if k != "noise_seed"}}
    }
    for name, (cfg, strat) in {
        "hand": (DELTA, strategy),
        "config": ({**config, **unseeded}, None),
    }.items():
        a = _run(tmp_path, f"{name}-a", cfg, strat)
        b = _run(tmp_path, f"{name}-b", cfg, strat)
        assert a.summary["config"]["seed"] == b.summary["config"]["seed"] == 7
        assert not all(np.array_equal(x, y) for x, y in zip(a.params, b.params)), name


def test_a_mechanism_hidden_from_the_inner_chain_is_refused(tmp_path):
    # A user's wrapper holding CentralDP under another name would get no ledger and
    # noise from the public seed: it is refused, naming the wrapper and the attribute.
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Mine:
        dp: object

        def init(self, params):
            return self.dp.init(params)

        def encode(self, update, info):
            return self.dp.encode(update, info)

        def aggregate(self, updates, state, rng):
            return self.dp.aggregate(updates, state, rng)

    strategy = Strategy(aggregator=Mine(CentralDP(1.0, 5.0)), fraction_fit=0.25)
    with pytest.raises(ConfigError, match=r"Mine.dp holds CentralDP: .* make it Mine's `inner`"):
        _run(tmp_path, "run", DELTA, strategy)
