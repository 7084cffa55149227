"""Second, independent checks of math that single tests used to guard alone."""

import math

import numpy as np
import pytest

from fedray.aggregators import AdaptiveClip, CentralDP, Mean, SecureAggregation
from fedray.aggregators.dp import next_clip
from fedray.records import ClientUpdate, RoundInfo


def test_secure_mean_of_three_known_updates_equals_the_plain_mean():
    sa = SecureAggregation(inner=Mean(weighting="uniform"), clip=4.0, bits=12)
    params = [np.zeros(5, np.float32)]
    state = sa.init(params)
    info = RoundInfo(1, 0, num_sampled=3)
    ups = [
        ClientUpdate(c, [np.array(v, np.float32)], 7)
        for c, v in enumerate([[1, -1, 0.5, 0, 2], [0.25, 0.5, -2, 1, 0], [-1, 1, 1, -0.5, 0.3]])
    ]
    total = sum(sa.encode(u, info).masked.astype(np.uint64) for u in ups)  # masks cancel
    decoded = sa.decode(total, [0, 1, 2], state, info)
    delta, _, _ = sa.finalize(decoded, state, np.random.default_rng(0))
    plain = np.mean([u.delta[0] for u in ups], axis=0)
    assert np.abs(delta[0] - plain).max() <= 3 * sa.quantizer.step  # divided by 3, not 4


def test_adaptive_clip_update_is_geometric():
    assert next_clip(1.0, 1.0, 0.5, 0.2) == pytest.approx(math.exp(-0.1))
    assert next_clip(2.0, 0.0, 0.5, 0.2) == pytest.approx(2.0 * math.exp(0.1))


@pytest.mark.parametrize("adaptive", [False, True])
def test_dp_noise_on_the_sum_has_std_z_delta_times_clip(adaptive):
    clip = AdaptiveClip(initial=0.5, count_stddev=3.0) if adaptive else 0.5
    agg = CentralDP(noise_multiplier=1.2, expected_clients=6.0, clip=clip)
    state = agg.init([np.zeros(200_000, np.float32)])
    delta, _, meas = agg.aggregate([], state, np.random.default_rng(4))  # a zero sum
    z = agg.update_noise_multiplier
    assert z == pytest.approx((1.2**-2 - 6.0**-2) ** -0.5 if adaptive else 1.2)
    assert float(np.std(delta[0].astype(np.float64))) == pytest.approx(z * 0.5 / 6.0, rel=0.01)
    assert meas["dp/noise_std"] == pytest.approx(z * 0.5 / 6.0)
