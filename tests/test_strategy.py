import numpy as np
import pytest

from fedray.aggregators import Mean
from fedray.strategy import STRATEGIES, Strategy, fedavg
from fedray.strategy.server_opt import ServerSGD


def test_fedavg_recipe_composes_mean_and_sgd():
    s = fedavg(fraction_fit=0.5, min_fit_clients=2)
    assert s.aggregator == Mean(weighting="examples")
    assert s.server_optimizer == ServerSGD(learning_rate=1.0)
    assert (s.fraction_fit, s.min_fit_clients, s.name) == (0.5, 2, "fedavg")
    assert STRATEGIES["fedavg"] is fedavg


@pytest.mark.parametrize(
    "fraction,n,expected", [(1.0, 7, 7), (0.5, 10, 5), (0.1, 100, 10), (0.01, 10, 1)]
)
def test_sampling_follows_fraction(fraction, n, expected):
    s = Strategy(fraction_fit=fraction)
    ids = s.sample_clients(n, np.random.default_rng(0))
    assert len(ids) == expected
    assert ids == sorted(set(ids))
    assert all(0 <= i < n for i in ids)


def test_sampling_respects_minimum_and_is_seeded():
    s = Strategy(fraction_fit=0.1, min_fit_clients=3)
    assert len(s.sample_clients(10, np.random.default_rng(1))) == 3
    a = [s.sample_clients(50, np.random.default_rng(7)) for _ in range(2)]
    assert a[0] == a[1]


def test_sampling_is_roughly_uniform():
    s = Strategy(fraction_fit=0.2)
    rng = np.random.default_rng(0)
    counts = np.zeros(10)
    for _ in range(2000):
        counts[s.sample_clients(10, rng)] += 1
    np.testing.assert_allclose(counts / 2000, 0.2, atol=0.03)


def test_bad_strategy_values():
    with pytest.raises(ValueError, match="fraction_fit must be in"):
        Strategy(fraction_fit=0)
    with pytest.raises(ValueError, match="min_fit_clients must be >= 0, got -1"):
        Strategy(min_fit_clients=-1)
    with pytest.raises(ValueError, match="sampling must be 'fixed' or 'poisson'"):
        Strategy(sampling="bernoulli")
    with pytest.raises(ValueError, match="only 2 clients exist"):
        Strategy(min_fit_clients=3).sample_clients(2, np.random.default_rng(0))


def test_poisson_sampling_lets_each_client_join_independently():
    s = Strategy(fraction_fit=0.3, min_fit_clients=0, sampling="poisson")
    rng = np.random.default_rng(0)
    sizes, counts = [], np.zeros(20)
    for _ in range(3000):
        ids = s.sample_clients(20, rng)
        sizes.append(len(ids))
        counts[ids] += 1
    assert ids == sorted(set(ids))
    np.testing.assert_allclose(counts / 3000, 0.3, atol=0.03)  # each client: probability q
    assert np.var(sizes) == pytest.approx(20 * 0.3 * 0.7, rel=0.15)  # Binomial(N, q) count
    assert min(sizes) < 6 < max(sizes)
