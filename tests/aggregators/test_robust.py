import numpy as np
import pytest

from fedray.aggregators import Krum, Mean, Median, NormBound, TrimmedMean
from fedray.records import ClientUpdate, RoundInfo
from tests.fakes import SumPlusOne

RNG = np.random.default_rng(0)


def _ups(rows, n=1):
    return [ClientUpdate(i, [np.asarray(r, np.float32)], n) for i, r in enumerate(rows)]


def test_median_per_coordinate_with_ties_and_even_counts():
    ups = _ups([[1, 5], [3, 5], [3, 9], [100, -7]])
    delta, _, meas = Median().aggregate(ups, {}, RNG)
    np.testing.assert_allclose(delta[0], [3.0, 5.0])  # (3+3)/2 and (5+5)/2
    assert meas["num_clients"] == 4
    with pytest.raises(ValueError, match="fedmedian needs at least 1 client updates"):
        Median().aggregate([], {}, RNG)


def test_trimmed_mean_hand_computed_and_limits():
    ups = _ups([[-100, 1], [1, 2], [2, 3], [3, 4], [100, 1000]])
    delta, _, meas = TrimmedMean(beta=0.2).aggregate(ups, {}, RNG)
    np.testing.assert_allclose(delta[0], [2.0, 3.0])  # drop 1 per side per coordinate
    assert meas["trimmed_per_side"] == 1
    # beta = 0 is the plain (unweighted) mean.
    np.testing.assert_allclose(TrimmedMean(beta=0.0).aggregate(ups, {}, RNG)[0][0], [1.2, 202.0])
    with pytest.raises(ValueError, match="beta must be in \\[0, 0.5\\), got 0.5"):
        TrimmedMean(beta=0.5)


def test_krum_picks_the_update_closest_to_the_honest_cluster():
    # 5 clients, f = 1 -> each score sums the n - f - 2 = 2 smallest squared distances.
    ups = _ups([[0.0], [1.0], [2.0], [2.5], [50.0]])
    # scores: 0: 1+4=5; 1: 1+1=2; 2: 0.25+1=1.25; 3: 0.25+2.25=2.5; 4: 47.5^2+48^2
    np.testing.assert_allclose(
        Krum(num_byzantine=1).scores(ups), [5.0, 2.0, 1.25, 2.5, 47.5**2 + 48**2]
    )
    delta, _, meas = Krum(num_byzantine=1).aggregate(ups, {}, RNG)
    np.testing.assert_allclose(delta[0], [2.0])
    assert meas["selected/2"] == 1.0
    # Multi-Krum with m = n - f = 4 averages all but the outlier.
    delta, _, meas = Krum(num_byzantine=1, num_selected=None).aggregate(ups, {}, RNG)
    np.testing.assert_allclose(delta[0], [(0 + 1 + 2 + 2.5) / 4])
    assert "selected/4" not in meas


def test_krum_ties_break_by_client_id_and_minimum_clients():
    ups = _ups([[1.0], [1.0], [1.0]])
    _, _, meas = Krum(num_byzantine=0).aggregate(ups, {}, RNG)
    assert meas["selected/0"] == 1.0 and "selected/1" not in meas
    with pytest.raises(
        ValueError, match="krum needs at least 5 client updates \\(n >= 2f \\+ 3 with f=1\\), got 4"
    ):
        Krum(num_byzantine=1).aggregate(_ups([[0], [1], [2], [3]]), {}, RNG)


def test_norm_bound_clips_then_delegates_everything_to_inner():
    agg = NormBound(inner=SumPlusOne(), max_norm=1.0)
    state = agg.init([np.zeros(2)])
    assert state == {"calls": 0}
    enc = agg.encode(_ups([[3.0, 4.0]])[0], RoundInfo(1, 0))
    assert enc.metrics == {"encoded": 1.0}  # the inner encode ran
    delta, state, meas = agg.aggregate(_ups([[3.0, 4.0], [0.3, 0.4]]), state, RNG)
    np.testing.assert_allclose(delta[0], [0.6 + 0.3 + 1, 0.8 + 0.4 + 1], rtol=1e-6)
    assert state == {"calls": 1}
    assert meas == {"inner": 7.0, "clipped_fraction": 0.5}


def test_norm_bound_limits_a_sign_flip_attacker_under_mean():
    honest = [[1.0, 1.0]] * 4
    attacker = [[-1000.0, -1000.0]]
    plain = Mean().aggregate(_ups(honest + attacker), {}, RNG)[0][0]
    bounded = NormBound(inner=Mean(), max_norm=2.0).aggregate(_ups(honest + attacker), {}, RNG)[0][
        0
    ]
    assert plain[0] < -100 and bounded[0] > 0.4


@pytest.mark.parametrize(
    "n,beta,per_side", [(5, 0.1, 0), (10, 0.25, 2), (3, 0.45, 1), (20, 0.05, 1), (7, 0.3, 2)]
)
def test_trimmed_mean_trims_the_floor_of_beta_n_per_side(n, beta, per_side):
    # A ceil survived every tier: on 5 values at 0.1 it trims one per side; on 3 at 0.45,
    # two per side of three values, a NaN every round.
    values = [-100.0, 1.0, 2.0, 3.0, 100.0] if n == 5 else list(range(n))
    delta, _, meas = TrimmedMean(beta=beta).aggregate(_ups([[v] for v in values]), {}, RNG)
    assert meas["trimmed_per_side"] == per_side
    kept = sorted(values)[per_side : n - per_side]
    np.testing.assert_allclose(delta[0], [np.mean(kept)], rtol=1e-6)
    if n == 5:
        np.testing.assert_allclose(delta[0], [1.2])  # nothing trimmed: the plain mean
