"""Distributed discrete DP: the pieces, the noise's distribution, the sensitivity and the
accountant, each against hand-computed values, scipy's distributions or dp-accounting."""

import math
from dataclasses import replace

import dp_accounting as dpa
import numpy as np
import pytest
import scipy.linalg
import scipy.stats

from fedray import config
from fedray.aggregators import DistributedDP, SecureAggregation
from fedray.errors import ConfigError
from fedray.privacy import DistributedPlan, distributed_epsilon
from fedray.privacy.discrete import (
    conditional_round,
    discrete_gaussian,
    hadamard,
    rotate,
    rotation_signs,
    rounding_bound,
    skellam,
    unrotate,
)
from fedray.privacy.distributed import INTEGER_ORDERS, calibrate, ddgauss_tau
from fedray.records import ClientUpdate, RoundInfo

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _plan(**kw):
    base = dict(
        mechanism="skellam",
        noise_multiplier=1.0,
        clip=1.0,
        dim=100,
        bits=16,
        expected_clients=10,
        population=10,
        max_dropout=0.2,
    )
    return DistributedPlan(**{**base, **kw})


def test_hadamard_is_the_sylvester_matrix_and_rotation_is_orthogonal():
    x = np.random.default_rng(0).normal(size=16)
    assert np.allclose(hadamard(x), scipy.linalg.hadamard(16) @ x)
    signs = rotation_signs(13, seed=4, server_round=2)
    assert signs.size == 16 and set(np.unique(signs)) == {-1.0, 1.0}
    y = rotate(x[:13], signs)
    assert np.linalg.norm(y) == pytest.approx(np.linalg.norm(x[:13]))
    assert np.allclose(unrotate(y, signs, 13), x[:13])
    # The signs are the round's: public and shared, but fresh each round.
    assert not np.array_equal(signs, rotation_signs(13, seed=4, server_round=3))
    assert np.array_equal(signs, rotation_signs(13, seed=4, server_round=2))


def test_rotation_spreads_a_spike_evenly():
    spike = np.zeros(1024)
    spike[7] = 1.0
    y = rotate(spike, rotation_signs(1024, 0, 1))
    assert np.allclose(np.abs(y), 1 / 32)  # every coordinate carries 1 / sqrt(d)


def test_conditional_rounding_is_unbiased_and_within_its_bound():
    rng = np.random.default_rng(1)
    x = rng.normal(size=64)
    x *= 20 / np.linalg.norm(x)
    bound = rounding_bound(20.0, 64)
    draws = np.array([conditional_round(x, bound, rng) for _ in range(4000)])
    assert (np.linalg.norm(draws, axis=1) <= bound + 1e-9).all()
    assert np.all(np.floor(x) <= draws.min(0)) and np.all(draws.max(0) <= np.ceil(x))
    # Unbiased up to the conditioning (beta = e^-0.5 rejects rarely here): 4 std errors.
    assert np.abs(draws.mean(0) - x).max() < 4 * 0.5 / math.sqrt(4000) + 0.02
    # An impossible bound returns the zero vector: the sensitivity still holds.
    assert not conditional_round(x, 1.0, rng, max_tries=5).any()


def test_the_sum_of_skellam_shares_is_skellam():
    rng = np.random.default_rng(2)
    lam, n, size = 3.7, 20, 200_000
    total = sum(skellam(lam, size, rng) for _ in range(n))
    mu = n * lam
    assert total.mean() == pytest.approx(0.0, abs=4 * math.sqrt(2 * mu / size))
    assert total.var() == pytest.approx(2 * mu, rel=0.02)
    assert scipy.stats.kurtosis(total) == pytest.approx(1 / (2 * mu), abs=0.03)  # excess 1/(2mu)
    ks = _ks_distance(total, scipy.stats.skellam(mu, mu).cdf)
    assert ks < 1.63 / math.sqrt(size)  # the 1 % critical value (conservative when discrete)


def _discrete_gaussian_cdf(sigma):
    k = np.arange(-int(40 * sigma) - 10, int(40 * sigma) + 11)
    pmf = np.exp(-(k.astype(float) ** 2) / (2 * sigma**2))
    cdf = np.cumsum(pmf / pmf.sum())
    return lambda v: np.interp(np.floor(v), k, cdf, left=0.0, right=1.0)


def _ks_distance(samples, cdf):
    values, counts = np.unique(samples, return_counts=True)
    empirical = np.cumsum(counts) / samples.size
    return float(np.abs(empirical - cdf(values)).max())


@pytest.mark.parametrize("sigma", [0.7, 2.5, 30.0])
def test_discrete_gaussian_samples_have_the_exact_pmf(sigma):
    rng = np.random.default_rng(3)
    size = 200_000
    x = discrete_gaussian(sigma, size, rng)
    assert _ks_distance(x, _discrete_gaussian_cdf(sigma)) < 1.63 / math.sqrt(size)
    k = np.arange(-400, 401)
    pmf = np.exp(-(k**2) / (2 * sigma**2))
    exact_var = float((k**2 * pmf).sum() / pmf.sum())
    assert x.var() == pytest.approx(exact_var, rel=0.02)
    assert x.mean() == pytest.approx(0.0, abs=4 * math.sqrt(exact_var / size))


def test_the_sum_of_discrete_gaussian_shares_is_close_to_a_discrete_gaussian():
    rng = np.random.default_rng(4)
    sigma, n, size = 1.5, 10, 200_000
    total = sum(discrete_gaussian(sigma, size, rng) for _ in range(n))
    assert total.var() == pytest.approx(n * sigma**2, rel=0.02)
    assert _ks_distance(total, _discrete_gaussian_cdf(math.sqrt(n) * sigma)) < 2.0 / math.sqrt(size)


def test_dropouts_are_covered_by_scaling_each_share():
    p = _plan(max_dropout=0.2)
    assert p.min_survivors == 8
    # m_min survivors carry exactly the whole noise; more carry more.
    assert p.min_survivors * p.local_std**2 == pytest.approx(p.noise_std**2)
    secure = SecureAggregation(inner=_ddp(max_dropout=0.2), min_clients=3)
    assert secure.required_clients == 8  # a round with 7 survivors aborts before unmasking


def _ddp(**kw):
    base = dict(noise_multiplier=1.0, expected_clients=10, population=10, clip=1.0, bits=16)
    return DistributedDP(**{**base, **kw})


@pytest.mark.parametrize("mechanism", ["skellam", "discrete_gaussian"])
def test_one_client_moves_the_decoded_sum_by_at_most_the_sensitivity(mechanism):
    """With the noise off, adding one client (any update; clipped in the host) moves the
    integer sum by at most B, the sensitivity the accountant uses, and the decoded float
    sum by at most B / gamma."""
    secure = SecureAggregation(
        inner=_ddp(mechanism=mechanism, noise_multiplier=0.0, noise_seed=1), min_clients=1
    )
    params = [np.zeros((7, 9), np.float32), np.zeros(5, np.float32)]
    state = secure.init(params)
    plan = secure.inner.plan(68)
    info = RoundInfo(3, 11, num_sampled=10)
    rng = np.random.default_rng(5)
    r = secure.modulus_bits(10)
    for trial in range(20):
        scale = [0.5, 1.0, 50.0][trial % 3]  # inside, on and far beyond the clip
        update = [scale * rng.normal(size=p.shape).astype(np.float32) for p in params]
        ints = secure.inner.encode_integers(ClientUpdate(trial, update, 1), info)
        assert np.linalg.norm(ints.astype(float)) <= plan.sensitivity + 1e-6
        masked = secure.encode(ClientUpdate(trial, update, 1), info).masked
        assert (masked < 2**r).all()
        decoded = secure.decode(masked.astype(np.uint64), [trial], state, info)
        moved = math.sqrt(sum(float((t**2).sum()) for t in decoded.total))
        assert moved <= plan.sensitivity / plan.scale + 1e-9
        # ... which is the clip, up to the rounding's inflation B / (gamma C).
        assert plan.sensitivity / plan.scale <= 1.0 * plan.inflation + 1e-12
    assert 1.0 < plan.inflation < 1.01


def test_ddgauss_accountant_equals_dp_accountings_gaussian_when_tau_vanishes():
    """sigma per share is large, so tau ~ 0 and the bound is the Gaussian's a x^2 / 2."""
    p = _plan(mechanism="discrete_gaussian", noise_multiplier=1.3, dim=1000, bits=20)
    assert ddgauss_tau(p.local_std, p.population) < 1e-300
    for k in (1, 10, 200):
        acc = dpa.rdp.RdpAccountant()
        acc.compose(dpa.GaussianDpEvent(1.3), k)
        assert distributed_epsilon(p, k, 1e-5) == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)


def test_skellam_accountant_is_the_gaussians_plus_a_vanishing_term():
    p = _plan(noise_multiplier=0.9, dim=1000, bits=20)
    for k in (1, 50):
        acc = dpa.rdp.RdpAccountant(orders=list(INTEGER_ORDERS))
        acc.compose(dpa.GaussianDpEvent(0.9), k)
        ref = acc.get_epsilon(1e-5)
        eps = distributed_epsilon(p, k, 1e-5)
        assert ref <= eps <= ref * 1.001


def test_small_shares_cost_more_privacy():
    """Few integer levels (a coarse scale) make the discrete terms count: the bounds then
    exceed the Gaussian's, never fall below it."""
    tight = _plan(
        mechanism="discrete_gaussian",
        noise_multiplier=1.0,
        dim=4,
        bits=1,
        expected_clients=200,
        population=200,
    )
    assert tight.local_std < 3
    acc = dpa.rdp.RdpAccountant()
    acc.compose(dpa.GaussianDpEvent(1.0), 10)
    assert distributed_epsilon(tight, 10, 1e-5) > acc.get_epsilon(1e-5)


def test_per_client_composition_without_amplification():
    """The server knows who took part: 10 releases cost ten times the RDP of one,
    whatever the sampling rate (sampling is not amplified)."""
    p = _plan(noise_multiplier=2.0)
    one = p.rdp()
    from fedray.privacy.distributed import rdp_epsilon

    ten = rdp_epsilon(p.orders(), 10 * one, 1e-6)
    assert distributed_epsilon(p, 10, 1e-6) == pytest.approx(ten)
    assert distributed_epsilon(p, 0, 1e-6) == 0.0
    assert math.isinf(distributed_epsilon(replace(p, noise_multiplier=0.0), 1, 1e-6))


def test_calibration_meets_the_target():
    p = _plan(dim=500)
    z = calibrate(p, 3.0, 20, 1e-5)
    assert distributed_epsilon(replace(p, noise_multiplier=z), 20, 1e-5) <= 3.0
    assert distributed_epsilon(replace(p, noise_multiplier=z * 0.99), 20, 1e-5) > 3.0


def test_the_modular_range_holds_the_worst_case_sum():
    """gamma is chosen so that n_max aligned clipped updates plus k std of the noise fit
    in [-2^(r-1), 2^(r-1)); the test takes n_max copies of the worst vector."""
    p = _plan(dim=64, bits=12, expected_clients=8, population=8, max_dropout=0.0)
    limit = 2 ** (p.modulus_bits - 1)
    aligned = p.max_clients * p.sensitivity / math.sqrt(p.padded)  # per coordinate, spread
    assert aligned + 6 * p.noise_std < limit
    with pytest.raises(ValueError, match="2\\^62"):
        _plan(bits=60, expected_clients=100, population=100)


def test_config_refuses_what_cannot_be_made_correct():
    base = [
        "privacy.dp.mode=distributed",
        "privacy.dp.delta=1e-5",
        "privacy.dp.noise_multiplier=1.0",
    ]
    from fedray.config.build import build_strategy

    with pytest.raises(ConfigError) as err:
        build_strategy(config.load({"data": {"num_clients": 8}}, base))
    msg = str(err.value)
    assert "privacy.dp.mode='distributed'" in msg
    assert "privacy.secure_aggregation.enabled=False" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="target_epsilon is not supported"):
        config.load({"data": {"num_clients": 8}}, [*base[:2], "privacy.dp.target_epsilon=2.0"])
    with pytest.raises(ConfigError, match="adaptive"):
        config.load({"data": {"num_clients": 8}}, [*base, "privacy.dp.clip=adaptive"])
    with pytest.raises(ConfigError, match="privacy.dp.max_dropout"):
        config.load({"data": {"num_clients": 8}}, [*base, "privacy.dp.max_dropout=1.0"])
    sa = "privacy.secure_aggregation.enabled=true"
    for other, key in [
        ("strategy.name=fedmedian", "strategy.name"),
        ("privacy.secure_aggregation.clip=2", "privacy.secure_aggregation.clip"),
        ("strategy.norm_bound=1.0", "strategy.norm_bound"),
    ]:
        with pytest.raises(ConfigError, match=key):
            build_strategy(config.load({"data": {"num_clients": 8}}, [*base, sa, other]))
    built = build_strategy(config.load({"data": {"num_clients": 8}}, [*base, sa]))
    assert isinstance(built.aggregator, SecureAggregation)
    assert isinstance(built.aggregator.inner, DistributedDP)


def test_the_privacy_command_prices_and_calibrates_distributed_dp(capsys):
    from fedray import cli

    base = ["privacy", "-q", "1", "-T", "20", "-d", "1e-5", "--clients", "200", "--dim", "610"]
    assert cli.main([*base, "-z", "5.178", "--distributed", "skellam"]) == 0
    out = capsys.readouterr().out
    plan = DistributedPlan("skellam", 5.178, 1.0, 610, 22, 200.0, 200, 0.1)
    assert f"after 20 releases at δ=1e-05: {distributed_epsilon(plan, 20, 1e-5):.4f}" in out
    assert "m_min=180" in out and "modulus 2^30" in out
    assert cli.main([*base, "-e", "4", "--distributed", "discrete_gaussian"]) == 0
    z = float(capsys.readouterr().out.split("noise_multiplier z = ")[1].split()[0])
    ddg = DistributedPlan("discrete_gaussian", z + 1e-4, 1.0, 610, 22, 200.0, 200, 0.1)
    assert distributed_epsilon(ddg, 20, 1e-5) <= 4.0
    assert (
        cli.main(
            ["privacy", "-e", "4", "-q", "1", "-T", "20", "-d", "1e-5", "--distributed", "skellam"]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "fedray: error: --distributed needs --clients N and --dim D (the model's size) >= 1"
    ]
