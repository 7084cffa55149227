"""Differential privacy: DP-FedAvg's math, adaptive clipping, accounting, budgets."""

import math

import numpy as np
import pytest

from fedray.aggregators import AdaptiveClip, CentralDP, LocalDP, Mean
from fedray.aggregators.dp import UNCLIPPED
from fedray.privacy import (
    DPFedAvgAccountant,
    LocalDPAccountant,
    calibrate_noise_multiplier,
    dpfedavg_epsilon,
    split_noise,
)
from fedray.records import ClientUpdate, RoundInfo
from fedray.strategy import Strategy, fedavg, with_dp

dpa = pytest.importorskip("dp_accounting")

SHAPES = [(3, 4), (4,)]


def _update(cid, rng, scale=1.0):
    return ClientUpdate(cid, [rng.normal(0, scale, s).astype(np.float32) for s in SHAPES], 50)


def _norm(delta):
    return math.sqrt(sum(float(np.sum(np.square(d, dtype=np.float64))) for d in delta))


def test_clipped_norms_never_exceed_c_and_short_updates_are_untouched():
    rng = np.random.default_rng(0)
    agg = CentralDP(noise_multiplier=1.0, expected_clients=10, clip=0.7)
    for cid in range(200):
        u = _update(cid, rng, scale=float(rng.choice([0.01, 0.1, 1.0, 10.0])))
        enc = agg.encode(u, RoundInfo(1, 0))
        assert _norm(enc.delta) <= 0.7 * (1 + 1e-6)
        if _norm(u.delta) <= 0.7:
            for a, b in zip(enc.delta, u.delta):
                np.testing.assert_array_equal(a, b)
        # The server learns only the clipped update (a fixed clip needs no bit).
        assert enc.metrics == {}
        assert enc.num_examples == 1
    adaptive = CentralDP(noise_multiplier=1.0, expected_clients=100, clip=AdaptiveClip(0.7))
    for cid in range(50):
        u = _update(cid, rng, scale=float(rng.choice([0.01, 10.0])))
        enc = adaptive.encode(u, RoundInfo(1, 0))
        # ... and, adaptively, the centred unclipped bit b - 1/2 (sensitivity 1/2).
        assert enc.metrics == {} and enc.protocol == {UNCLIPPED: float(_norm(u.delta) <= 0.7) - 0.5}


def test_noise_std_on_the_mean_is_z_c_over_m():
    z, clip, m = 1.3, 0.5, 8.0
    agg = CentralDP(noise_multiplier=z, expected_clients=m, clip=clip)
    params = [np.zeros((200, 250), np.float32)]
    state = agg.init(params)
    zeros = [ClientUpdate(c, [np.zeros((200, 250), np.float32)], 1) for c in range(5)]
    delta, _, meas = agg.aggregate(zeros, state, np.random.default_rng(1))
    x = delta[0].astype(np.float64).ravel()
    n = x.size
    expected = z * clip / m
    assert meas["dp/noise_std"] == pytest.approx(expected)
    # Chi-square: n * s^2 / sigma^2 ~ chi2(n); a 6-sigma band around n.
    stat = float(np.sum(x**2)) / expected**2
    assert abs(stat - n) < 6 * math.sqrt(2 * n)
    assert abs(float(x.mean())) < 6 * expected / math.sqrt(n)


@pytest.mark.slow
def test_the_estimator_is_unbiased_under_poisson_sampling():
    rng = np.random.default_rng(2)
    num_clients, q = 40, 0.25
    ups = [_update(c, rng, scale=0.05) for c in range(num_clients)]  # all shorter than C
    strategy = with_dp(
        Strategy(aggregator=Mean(weighting="uniform"), fraction_fit=q),
        CentralDP(noise_multiplier=0.0, expected_clients=q * num_clients, clip=10.0),
    )
    state = strategy.aggregator.init(ups[0].delta)
    sizes, total = [], [np.zeros(s) for s in SHAPES]
    draws = 4000
    for _ in range(draws):
        ids = strategy.sample_clients(num_clients, rng)
        sizes.append(len(ids))
        delta, _, _ = strategy.aggregator.aggregate([ups[i] for i in ids], state, rng)
        for t, d in zip(total, delta):
            t += d
    truth = [np.mean([u.delta[k] for u in ups], axis=0) for k in range(len(SHAPES))]
    spread = max(float(np.abs(t).max()) for t in truth)
    for t, want in zip(total, truth):
        np.testing.assert_allclose(t / draws, want, atol=0.1 * spread)
    assert len(set(sizes)) > 5  # the realised count really varies (Poisson)
    assert np.mean(sizes) == pytest.approx(q * num_clients, rel=0.05)


@pytest.mark.slow
@pytest.mark.parametrize("start", [0.01, 100.0])
def test_adaptive_clip_converges_to_the_target_quantile_from_either_side(start):
    rng = np.random.default_rng(3)
    m, gamma = 100, 0.5
    agg = CentralDP(
        noise_multiplier=1.0,
        expected_clients=m,
        clip=AdaptiveClip(initial=start, target_quantile=gamma, learning_rate=0.2),
    )
    state = agg.init([np.zeros(2, np.float32)])
    clips = []
    for r in range(1, 301):
        info = RoundInfo(r, 0, settings=state["round_settings"])
        norms = rng.lognormal(mean=0.0, sigma=0.5, size=m)  # median 1: the 0.5-quantile
        ups = []
        for c, n in enumerate(norms):
            v = rng.normal(size=2)
            ups.append(
                agg.encode(
                    ClientUpdate(c, [(v / np.linalg.norm(v) * n).astype(np.float32)], 1), info
                )
            )
        _, state, _ = agg.aggregate(ups, state, rng)
        clips.append(state["round_settings"]["dp_clip"])
    final = float(np.median(clips[-50:]))
    assert 0.85 < final < 1.15, final  # the true median norm is 1
    # Moving the right way from the start: up from below, down from above.
    assert (clips[5] > start) if start < 1 else (clips[5] < start)


@pytest.mark.slow
def test_adaptive_clipping_splits_the_noise_budget_as_the_paper_does():
    assert split_noise(1.0, 5.0) == pytest.approx(1.005, abs=1e-3)  # m = 100, sigma_b = m/20
    with pytest.raises(ValueError, match="noise_multiplier < 2 \\* count_stddev"):
        split_noise(12.0, 5.0)
    # The composed event of updates + count costs exactly what Gaussian(z) costs.
    acc = DPFedAvgAccountant(1.0, 0.01, 1e-5, count_noise_multiplier=10.0)
    assert acc.epsilon(1000) == pytest.approx(2.1014, abs=2e-3)
    acc = DPFedAvgAccountant(1.0, 0.1, 1e-5, count_noise_multiplier=10.0)
    assert acc.epsilon(20, method="pld") == pytest.approx(
        dpfedavg_epsilon(1.0, 0.1, 20, 1e-5, method="pld"), rel=1e-6
    )


# Reference values from the shared privacy notes (dp-accounting 0.6.0, delta = 1e-5).
REFERENCE = [
    (1.0, 0.01, 1000, 2.101, 1.828),
    (1.1, 0.1, 100, 6.621, 5.913),
    (1.0, 0.1, 100, 7.904, 7.047),
    (2.0, 0.1, 200, 3.680, 3.360),
    (1.0, 0.01, 500, 1.653, 1.326),
    (0.5, 0.01, 1000, 15.47, 13.36),
]


@pytest.mark.slow
@pytest.mark.parametrize("z,q,rounds,rdp,pld", REFERENCE)
def test_epsilon_matches_dp_accounting_and_the_reference_table(z, q, rounds, rdp, pld):
    T = rounds  # noqa: N806 - the papers' name
    from dp_accounting import pld as dpa_pld
    from dp_accounting import rdp as dpa_rdp

    event = dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(z)), T)
    own = dpa_rdp.RdpAccountant()
    own.compose(event)
    assert dpfedavg_epsilon(z, q, T, 1e-5) == pytest.approx(own.get_epsilon(1e-5), rel=1e-12)
    assert dpfedavg_epsilon(z, q, T, 1e-5) == pytest.approx(rdp, abs=0.01 * max(1, rdp))
    if T <= 200:  # PLD is slower; two rows are enough to pin it
        own = dpa_pld.PLDAccountant()
        own.compose(event)
        eps_pld = dpfedavg_epsilon(z, q, T, 1e-5, method="pld")
        assert eps_pld == pytest.approx(own.get_epsilon(1e-5), rel=1e-9)
        assert eps_pld == pytest.approx(pld, abs=0.01 * max(1, pld))


@pytest.mark.slow
def test_fixed_size_sampling_uses_the_replace_one_analysis():
    # N = 1000, m = 10, T = 1000: z = 2 gives 3.58 under replace-one (shared notes).
    eps = dpfedavg_epsilon(2.0, 0.01, 1000, 1e-5, sampling="fixed", population=1000)
    assert eps == pytest.approx(3.58, abs=0.02)
    with pytest.raises(ValueError, match="RDP only"):
        dpfedavg_epsilon(2.0, 0.01, 10, 1e-5, method="pld", sampling="fixed", population=1000)


@pytest.mark.slow
def test_calibration_hits_the_target_from_below():
    z = calibrate_noise_multiplier(3.0, 0.01, 1000, 1e-5)
    assert z == pytest.approx(0.865, abs=2e-3)
    assert dpfedavg_epsilon(z, 0.01, 1000, 1e-5) <= 3.0
    assert dpfedavg_epsilon(z - 0.005, 0.01, 1000, 1e-5) > 3.0
    with pytest.raises(ValueError, match="cannot be reached"):
        calibrate_noise_multiplier(1e-4, 1.0, 1000, 1e-5)


def test_local_dp_noises_each_update_and_accounts_per_client():
    agg = LocalDP(noise_multiplier=2.0, clip=0.5, noise_seed=7)
    u = ClientUpdate(3, [np.zeros((100, 100), np.float32)], 10, {"loss": 1.0})
    enc = agg.encode(u, RoundInfo(1, 0))
    assert float(np.std(enc.delta[0])) == pytest.approx(1.0, rel=0.05)  # z C = 1
    assert enc.metrics == {} and enc.num_examples == 1
    again = agg.encode(u, RoundInfo(1, 0))
    np.testing.assert_array_equal(enc.delta[0], again.delta[0])  # seeded: reproducible
    secret = LocalDP(noise_multiplier=2.0, clip=0.5)
    assert not np.array_equal(secret.encode(u, RoundInfo(1, 0)).delta[0], enc.delta[0])

    acc = LocalDPAccountant(noise_multiplier=8.0, delta=1e-5)
    for r in range(9):
        acc.record([0, 1] if r % 3 else [0])
    assert acc.participations == {0: 9, 1: 6}
    # k releases with sensitivity 2C and std zC: one Gaussian with multiplier z / (2 sqrt k).
    want = dpa.get_epsilon_gaussian(8.0 / (2 * 3.0), 1e-5)
    assert acc.epsilon() == pytest.approx(want)
    assert acc.report()["epsilon_per_client"][1] == pytest.approx(
        dpa.get_epsilon_gaussian(8.0 / (2 * math.sqrt(6)), 1e-5)
    )
    # Analytic, not the classic sqrt(2 ln(1.25/δ))/ε (which over-noises and fails for ε >= 1).
    assert dpa.get_sigma_gaussian(1.0, 1e-5) == pytest.approx(3.73, abs=0.01)


def test_example_weighting_is_refused_under_dp():
    dp = CentralDP(noise_multiplier=1.0, expected_clients=10)
    with pytest.raises(ValueError, match="uniform client weights"):
        with_dp(fedavg(), dp)  # fedavg's mean weights by examples
    from dataclasses import replace

    from fedray.strategy import krum

    ok = with_dp(replace(fedavg(), aggregator=Mean(weighting="uniform")), dp)
    assert ok.sampling == "poisson" and ok.min_fit_clients == 0
    with pytest.raises(ValueError, match="needs a mean aggregator"):
        with_dp(krum(num_byzantine=1, min_fit_clients=5), dp)


@pytest.mark.slow
def test_budget_exhaustion_stops_with_the_model_of_the_last_allowed_round():
    from fedray.callbacks import Callback, History
    from fedray.loop import run_rounds
    from tests.fakes import QuadraticExecutor

    def run(rounds, max_epsilon):
        ex = QuadraticExecutor([[float(i)] for i in range(10)], [1] * 10)
        dp = CentralDP(noise_multiplier=1.0, expected_clients=5.0, clip=100.0)
        strategy = with_dp(Strategy(aggregator=Mean(weighting="uniform"), fraction_fit=0.5), dp)
        ledger = DPFedAvgAccountant(1.0, 0.5, 1e-5, max_epsilon=max_epsilon)
        rec = History()
        params = run_rounds(
            strategy=strategy,
            executor=ex,
            rounds=rounds,
            seed=0,
            callback=Callback(),
            history=rec,
            privacy=ledger,
            rng_seed=1234,
            noise_seed=99,
        )
        return params, rec.rows, ledger

    budget = dpfedavg_epsilon(1.0, 0.5, 4, 1e-5) + 1e-9  # room for exactly 4 rounds
    params, rows, ledger = run(10, budget)
    assert [r["round"] for r in rows] == [1, 2, 3, 4] and ledger.rounds == 4
    assert rows[-1]["privacy/epsilon"] <= budget
    for r in rows:
        assert r["privacy/epsilon"] == pytest.approx(dpfedavg_epsilon(1.0, 0.5, r["round"], 1e-5))
    ref, _, _ = run(4, None)  # the same seeded sampling and noise, 4 rounds, no budget
    np.testing.assert_array_equal(params[0], ref[0])


DP_RUN = [
    "rounds=5",
    "data.num_clients=10",
    "strategy.fraction_fit=0.5",
    "strategy.min_fit_clients=1",
    "privacy.dp.noise_multiplier=0.8",
    "privacy.dp.delta=1e-5",
    "privacy.dp.clip=5.0",
    "runtime.executor=local",
    "runtime.clients_per_actor=10",
    "runtime.progress=false",
]


@pytest.mark.keras
def test_a_dp_run_reports_epsilon_per_round_and_in_the_summary(tmp_path, linreg_config):
    pytest.importorskip("tensorflow")
    import json

    import pandas as pd

    from fedray import api

    hist = api.run(linreg_config, out=tmp_path, overrides=DP_RUN)
    df = pd.read_csv(tmp_path / "metrics.csv")
    want = [dpfedavg_epsilon(0.8, 0.5, t, 1e-5) for t in range(1, 6)]
    np.testing.assert_allclose(df["privacy/epsilon"], want, rtol=1e-9)
    assert not [c for c in df.columns if c.startswith("fit/")]  # clients report no metrics
    np.testing.assert_allclose(df["agg/dp/noise_std"], 0.8 * 5.0 / 5.0)
    p = json.loads((tmp_path / "summary.json").read_text())["privacy"]
    assert p["epsilon_rdp"] == pytest.approx(want[-1])
    # One ε, the one every round showed and every budget is held to: RDP's. PLD's
    # tighter figure for the same rounds is kept beside it.
    assert p["epsilon"] == p["epsilon_rdp"] == df["privacy/epsilon"].iloc[-1]
    assert p["accountant"] == "RDP"
    assert p["epsilon_pld"] == pytest.approx(dpfedavg_epsilon(0.8, 0.5, 5, 1e-5, method="pld"))
    assert p["epsilon_pld"] < p["epsilon_rdp"]
    assert (p["delta"], p["noise_multiplier"], p["sampling_rate"], p["rounds"]) == (
        1e-5,
        0.8,
        0.5,
        5,
    )
    assert p["stopped_early"] is False
    assert hist.summary["privacy"] == p
    from rich.console import Console

    from fedray.reports import report

    console = Console(width=120, record=True)
    console.print(report(tmp_path))
    text = console.export_text()
    assert "privacy/epsilon" in text and f"{p['epsilon']:.4g}" in text


@pytest.mark.keras
def test_max_epsilon_stops_a_run_cleanly(tmp_path, linreg_config):
    pytest.importorskip("tensorflow")
    from fedray import api

    budget = dpfedavg_epsilon(0.8, 0.5, 3, 1e-5) * 1.0001
    hist = api.run(
        linreg_config, out=tmp_path, overrides=[*DP_RUN, f"privacy.dp.max_epsilon={budget}"]
    )
    assert [r["round"] for r in hist.rows] == [1, 2, 3]
    assert hist.summary["privacy"]["stopped_early"] is True
    assert hist.summary["privacy"]["epsilon_rdp"] <= budget
    assert (tmp_path / "model.keras").is_file()


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            ["privacy.dp.noise_multiplier=-1", "privacy.dp.delta=1e-5"],
            "privacy.dp.noise_multiplier = -1: Input should be greater than or equal to 0",
        ),
        (["privacy.dp.noise_multiplier=1.0"], "privacy.dp.delta is required"),
        (
            [
                "privacy.dp.noise_multiplier=1",
                "privacy.dp.target_epsilon=2",
                "privacy.dp.delta=1e-5",
            ],
            "one of noise_multiplier (z >= 0) or target_epsilon, not both",
        ),
        (
            [
                "privacy.dp.noise_multiplier=1",
                "privacy.dp.delta=1e-5",
                "strategy.name=krum",
                "strategy.min_fit_clients=3",
            ],
            "privacy.dp.mode='central' does not work with strategy.name='krum'",
        ),
        (
            [
                "privacy.dp.noise_multiplier=1",
                "privacy.dp.delta=1e-5",
                "strategy.weighting=examples",
            ],
            "uniform client weights",
        ),
    ],
)
def test_bad_dp_configs_get_clear_errors(overrides, message):
    from fedray import config
    from fedray.errors import ConfigError

    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config.load({"data": {"num_clients": 10}}, overrides)


def test_a_dp_section_with_only_delta_needs_a_strategy_that_holds_the_mechanism():
    from fedray import config
    from fedray.config import build
    from fedray.errors import ConfigError

    cfg = config.load({"data": {"num_clients": 10}}, ["privacy.dp.delta=1e-5"])
    with pytest.raises(ConfigError, match=r"privacy.dp needs noise_multiplier \(z >= 0\) or "):
        build.build_strategy(cfg)


@pytest.mark.slow
def test_an_unreachable_target_epsilon_is_a_clear_error():
    from fedray import config
    from fedray.config import build
    from fedray.errors import ConfigError

    cfg = config.load(
        {"rounds": 1000, "data": {"num_clients": 10}},
        ["privacy.dp.target_epsilon=0.0001", "privacy.dp.delta=1e-5"],
    )
    with pytest.raises(
        ConfigError, match=r"privacy.dp.target_epsilon = 0.0001: .*cannot be reached"
    ):
        build.build_strategy(cfg)
    cfg = config.load(
        {"rounds": 100, "data": {"num_clients": 100}},
        ["privacy.dp.target_epsilon=3", "privacy.dp.delta=1e-5", "strategy.fraction_fit=0.1"],
    )
    strategy = build.build_strategy(cfg)
    assert strategy.aggregator.noise_multiplier == pytest.approx(1.796, abs=3e-3)  # shared notes


def test_membership_auc_matches_scikit_learn():
    from sklearn.metrics import roc_auc_score

    from fedray.privacy.audit import roc_auc, tpr_at_fpr

    rng = np.random.default_rng(5)
    a, b = rng.normal(0.5, 1, 300), rng.normal(0, 1, 400)
    want = roc_auc_score(np.r_[np.ones(300), np.zeros(400)], np.r_[a, b])
    assert roc_auc(a, b) == pytest.approx(want, rel=1e-12)
    assert tpr_at_fpr(a + 100, b, 0.0) == 1.0  # perfectly separated


@pytest.mark.parametrize("mu", [0.5, 2.0, 4.0])
def test_the_empirical_epsilon_bound_never_exceeds_the_true_epsilon(mu):
    """Scores of a Gaussian mechanism: the true ε is known in closed form."""
    from fedray.privacy.audit import epsilon_lower_bound

    rng = np.random.default_rng(6)
    members, nonmembers = rng.normal(mu, 1, 5000), rng.normal(0, 1, 5000)
    true_eps = dpa.get_epsilon_gaussian(1 / mu, 1e-5)
    lb = epsilon_lower_bound(members, nonmembers, 1e-5)
    assert lb <= true_eps
    if mu >= 2:
        assert lb > 2.0  # not vacuous when leakage is large (n = 5000 caps it near ln n)


@pytest.mark.keras
def test_a_resumed_dp_run_equals_the_uninterrupted_one(tmp_path, linreg_config):
    pytest.importorskip("tensorflow")
    from fedray import api

    seeded = [
        *DP_RUN,
        "privacy.dp.noise_seed=42",
        "privacy.dp.clip=adaptive",
        "privacy.dp.initial_clip=1.0",
        "privacy.dp.count_stddev=1.0",
    ]
    full = api.run(linreg_config, out=tmp_path / "full", overrides=[*seeded, "rounds=4"])
    api.run(linreg_config, out=tmp_path / "part", overrides=[*seeded, "rounds=2"])
    resumed = api.run(
        linreg_config, out=tmp_path / "part", overrides=[*seeded, "rounds=4"], resume=True
    )
    for a, b in zip(full.params, resumed.params):
        np.testing.assert_array_equal(a, b)  # same sampling, noise and adaptive clip
    assert resumed.summary["privacy"]["rounds"] == 4
    assert [r["privacy/epsilon"] for r in resumed.rows] == [r["privacy/epsilon"] for r in full.rows]
    assert [r["agg/dp/clip"] for r in resumed.rows] == [r["agg/dp/clip"] for r in full.rows]


@pytest.mark.keras
def test_audit_writes_a_table_and_plot_for_plain_and_dp_runs(tmp_path, linreg_config):
    pytest.importorskip("tensorflow")
    import pandas as pd

    from fedray import api
    from fedray.cli.audit import audit

    plain = [o for o in DP_RUN if not o.startswith("privacy.")]
    api.run(linreg_config, out=tmp_path / "plain", overrides=[*plain, "rounds=2"])
    api.run(linreg_config, out=tmp_path / "dp", overrides=[*DP_RUN, "rounds=2"])
    table = audit([tmp_path / "plain", tmp_path / "dp"], tmp_path / "audit")
    assert list(table["mechanism"]) == ["no DP", "DP-FedAvg (central)"]
    assert table["epsilon"].iloc[0] == float("inf") and table["epsilon"].iloc[1] > 0
    assert ((table["auc"] >= 0) & (table["auc"] <= 1)).all()
    assert (table["members"] == table["nonmembers"]).all()
    assert pd.read_csv(tmp_path / "audit" / "audit.csv").shape[0] == 2
    assert (tmp_path / "audit" / "audit.png").stat().st_size > 0


def test_an_explicit_count_stddev_is_kept_or_refused():
    from fedray.aggregators import AdaptiveClip, CentralDP

    # Before, count_stddev=0.0 silently became m / 20 (``count_stddev or m / 20``).
    with pytest.raises(ValueError, match="count_stddev must be > 0"):
        AdaptiveClip(count_stddev=0.0)
    assert CentralDP(1.0, 40.0, clip=AdaptiveClip(count_stddev=3.0)).count_stddev == 3.0
    assert CentralDP(1.0, 40.0, clip=AdaptiveClip()).count_stddev == 2.0  # m / 20


def test_the_clip_rule_is_an_object_central_dp_asks_not_a_mode():
    # Fixed and adaptive clipping are two objects behind one small protocol, so a third
    # rule (here a schedule that halves C each round) plugs in with no change to CentralDP.
    from dataclasses import dataclass

    from fedray.aggregators import FixedClip
    from fedray.records import ClientUpdate, RoundInfo

    @dataclass(frozen=True)
    class Halving(FixedClip):
        @property
        def fixed_norm(self):
            return None

        def adapt(self, clip, centred, expected_clients, rng):
            return clip / 2, {"dp/halved": 1.0}

    agg = CentralDP(noise_multiplier=0.0, expected_clients=2.0, clip=Halving(4.0))
    assert CentralDP(1.0, 2.0, clip=3.0).clip == FixedClip(3.0)  # a number is a fixed rule
    state = agg.init([np.zeros(2, np.float32)])
    clips = []
    for r in range(3):
        info = RoundInfo(r + 1, 0, settings=agg.client_settings(state))
        up = agg.encode(ClientUpdate(0, [np.array([30.0, 40.0], np.float32)], 5), info)
        clips.append(float(np.linalg.norm(up.delta[0])))
        _, state, meas = agg.aggregate([up], state, np.random.default_rng(0))
        assert meas["dp/halved"] == 1.0
    np.testing.assert_allclose(clips, [4.0, 2.0, 1.0], rtol=1e-6)
