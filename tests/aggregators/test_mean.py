import numpy as np
import pytest

from fedray.aggregators import Aggregator, Mean, weighted_mean
from fedray.records import ClientUpdate, RoundInfo


def _u(cid, values, n):
    return ClientUpdate(cid, [np.asarray(v, dtype=np.float32) for v in values], n)


def test_weighted_mean_hand_computed():
    ups = [_u(0, [[1, 2], [10]], 1), _u(1, [[4, 8], [40]], 3)]
    delta = weighted_mean(ups)
    # (1*[1,2] + 3*[4,8]) / 4 = [13/4, 26/4]; (1*10 + 3*40)/4 = 32.5
    np.testing.assert_allclose(delta[0], [3.25, 6.5])
    np.testing.assert_allclose(delta[1], [32.5])
    assert delta[0].dtype == np.float32


def test_uniform_weighting_ignores_example_counts():
    ups = [_u(0, [[1.0]], 1), _u(1, [[4.0]], 1000)]
    np.testing.assert_allclose(weighted_mean(ups, weighting="uniform")[0], [2.5])


def test_result_is_independent_of_arrival_order():
    rng = np.random.default_rng(0)
    ups = [_u(i, [rng.normal(size=50)], int(rng.integers(1, 100))) for i in range(20)]
    a = weighted_mean(ups)
    b = weighted_mean(list(reversed(ups)))
    assert np.array_equal(a[0], b[0])  # bit for bit


def test_read_only_inputs_are_not_mutated():
    arr = np.array([1.0, 2.0], np.float32)
    arr.setflags(write=False)
    ups = [ClientUpdate(0, [arr], 2), _u(1, [[3.0, 4.0]], 2)]
    np.testing.assert_allclose(weighted_mean(ups)[0], [2.0, 3.0])
    assert arr.tolist() == [1.0, 2.0]


def test_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="got 0"):
        weighted_mean([])
    with pytest.raises(ValueError, match="total weight must be positive"):
        weighted_mean([_u(0, [[1.0]], 0)])
    with pytest.raises(ValueError, match="'median'"):
        weighted_mean([_u(0, [[1.0]], 1)], weighting="median")  # type: ignore[arg-type]


def test_mean_follows_the_aggregator_protocol():
    agg = Mean()
    assert isinstance(agg, Aggregator)
    state = agg.init([np.zeros(2)])
    u = _u(3, [[1.0, 1.0]], 5)
    assert agg.encode(u, RoundInfo(server_round=1, seed=0)) is u
    delta, new_state, meas = agg.aggregate(
        [u, _u(4, [[3.0, 3.0]], 5)], state, np.random.default_rng(0)
    )
    np.testing.assert_allclose(delta[0], [2.0, 2.0])
    assert new_state == {}
    assert meas == {"num_clients": 2.0, "total_weight": 10.0}
