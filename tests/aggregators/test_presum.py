"""Pre-aggregation: host partial sums give what aggregating every update gives."""

import numpy as np
import pytest

from fedray.aggregators import (
    AdaptiveClip,
    CentralDP,
    LinearAggregator,
    LocalDP,
    Mean,
    combine,
    presum,
)
from fedray.aggregators.dp import UNCLIPPED
from fedray.loop.steps import aggregate
from fedray.records import ClientUpdate, PartialSum, RoundInfo


def _updates(n=23, seed=0):
    rng = np.random.default_rng(seed)
    return [
        ClientUpdate(
            i,
            [rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=4).astype(np.float32)],
            int(rng.integers(1, 200)),
            {"loss": float(rng.random()), "accuracy": float(rng.random())},
        )
        for i in range(n)
    ]


def _hosts(updates, sizes):
    """Split updates into consecutive groups of the given sizes (one per host)."""
    out, start = [], 0
    for s in sizes:
        out.append(updates[start : start + s])
        start += s
    assert start == len(updates)
    return out


def _via_partials(agg, updates, state, rng, sizes):
    parts = [presum(group, agg) for group in _hosts(updates, sizes)]
    total = combine(list(reversed(parts)))  # arrival order must not matter
    return aggregate(agg, [total], updates[0].delta, state, rng)  # the loop's path


@pytest.mark.parametrize("weighting", ["examples", "uniform"])
@pytest.mark.parametrize("sizes", [[23], [1] * 23, [5, 7, 11], [20, 3]])
def test_mean_of_partial_sums_equals_mean_of_every_update(weighting, sizes):
    agg = Mean(weighting)
    ups = _updates()
    want, _, want_meas = agg.aggregate(ups, {}, np.random.default_rng(0))
    got, _, got_meas = _via_partials(agg, ups, {}, np.random.default_rng(0), sizes)
    for w, g in zip(want, got, strict=True):
        assert g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)
    assert got_meas == pytest.approx(want_meas)


def test_partial_sum_weights_by_examples_and_sums_metrics_hand_computed():
    ups = [
        ClientUpdate(0, [np.array([1.0, 2.0])], 1, {"loss": 3.0}, protocol={"bit": 1.0}),
        ClientUpdate(1, [np.array([4.0, 8.0])], 3, {"loss": 1.0}, protocol={"bit": 0.0}),
    ]
    p = presum(ups, Mean("examples"))
    np.testing.assert_allclose(p.total[0], [13.0, 26.0])  # 1*[1,2] + 3*[4,8]
    assert (p.weight, p.num_examples) == (4.0, 4)
    assert p.metric_sums == {"loss": 6.0}  # 1*3 + 3*1
    assert p.protocol_sums == {"bit": 1.0}  # protocol values are summed plainly
    u = presum(ups, Mean("uniform"))
    np.testing.assert_allclose(u.total[0], [5.0, 10.0])
    assert u.weight == 2.0


def test_central_dp_from_partial_sums_equals_dp_on_every_update():
    agg = CentralDP(noise_multiplier=1.0, expected_clients=20.0, clip=AdaptiveClip(initial=2.5))
    state = agg.init(_updates(1)[0].delta)
    info = RoundInfo(1, 0, settings=dict(state["round_settings"]))
    ups = [agg.encode(u, info) for u in _updates()]  # clipped in the host, bit reported
    want, want_state, _ = agg.aggregate(ups, state, np.random.default_rng(7))
    got, got_state, _ = _via_partials(agg, ups, state, np.random.default_rng(7), [5, 7, 11])
    for w, g in zip(want, got, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)  # the same noise draw
    bits = sum(u.protocol[UNCLIPPED] for u in ups)
    assert -len(ups) / 2 < bits < len(ups) / 2  # centred bits: a mix, not vacuous
    assert got_state["round_settings"]["dp_clip"] == pytest.approx(
        want_state["round_settings"]["dp_clip"]
    )


def test_local_dp_from_partial_sums_equals_local_dp_on_every_update():
    agg = LocalDP(noise_multiplier=0.5, clip=1.0, noise_seed=3)
    ups = [agg.encode(u, RoundInfo(1, 0)) for u in _updates()]
    want, _, want_meas = agg.aggregate(ups, {}, np.random.default_rng(0))
    got, _, got_meas = _via_partials(agg, ups, {}, np.random.default_rng(0), [10, 13])
    for w, g in zip(want, got, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    assert got_meas == pytest.approx(want_meas)


def test_robust_and_stateful_rules_are_not_summable():
    from fedray.aggregators import Krum, Median, NormBound, TrimmedMean

    for agg in (Median(), TrimmedMean(0.1), Krum(), NormBound()):
        assert not isinstance(agg, LinearAggregator), agg
    for agg in (Mean(), CentralDP(1.0, 10.0), LocalDP(1.0)):
        assert isinstance(agg, LinearAggregator), agg


def test_combine_refuses_overlapping_parts_and_presum_refuses_nothing():
    a = PartialSum((0, 1), [np.zeros(2)], 2.0, 2)
    with pytest.raises(ValueError, match=r"overlap: client ids \[0, 1, 1\]"):
        combine([a, PartialSum((1,), [np.zeros(2)], 1.0, 1)])
    with pytest.raises(ValueError, match="at least one update"):
        presum([], Mean())
    with pytest.raises(ValueError, match="at least one partial"):
        combine([])


def test_secure_sums_refuse_example_weighting_and_an_empty_mean():
    from fedray.aggregators import SecureAggregation

    with pytest.raises(ValueError, match="without example counts"):
        SecureAggregation(Mean("examples"))
    with pytest.raises(ValueError, match="Mean needs at least one update, got 0"):
        Mean().aggregate([], {}, np.random.default_rng(0))
