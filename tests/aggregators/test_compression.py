"""Compression wrappers: unbiased quantization, rotation, the bytes they put on the
wire, and delegation to the inner aggregator (a fake inner). Top-k: tests/features."""

import math

import numpy as np
import pytest

from fedray import config
from fedray.aggregators import CentralDP, Mean, SecureAggregation
from fedray.aggregators.compression import (
    Quantize,
    Rotate,
    stochastic_round,
    wire_bytes,
)
from fedray.config.build import build_strategy
from fedray.errors import ConfigError
from fedray.records import ClientUpdate, RoundInfo
from tests.fakes import SumPlusOne

RNG = np.random.default_rng(0)


def _update(cid, arrays, **kw):
    return ClientUpdate(cid, [np.asarray(a, np.float32) for a in arrays], 5, **kw)


@pytest.mark.parametrize("bits", [1, 4, 8])
def test_quantization_is_unbiased_on_its_grid_and_within_one_step(bits):
    x = np.random.default_rng(1).normal(size=50)
    draws = np.array([stochastic_round(x, bits, RNG) for _ in range(4000)])
    step = (x.max() - x.min()) / (2**bits - 1)
    assert np.abs(draws - x).max() <= step + 1e-12
    levels = np.round((draws - x.min()) / step)
    assert np.allclose(draws, x.min() + levels * step) and len(np.unique(levels)) <= 2**bits
    # E[q] = x: 4 standard errors of a coin worth one step.
    assert np.abs(draws.mean(0) - x).max() < 4 * step / 2 / math.sqrt(4000) + 1e-12


def test_quantize_then_dp_clip_keeps_the_sensitivity():
    """The inner client step (DP's clip) runs after quantization, so the update that
    leaves the host still has norm at most C."""
    agg = Quantize(inner=CentralDP(1.0, 10.0, clip=1.0), bits=2)
    state = agg.init([np.zeros(100)])
    info = RoundInfo(1, 0, settings={"dp_clip": 1.0})
    for cid in range(20):
        big = np.random.default_rng(cid).normal(size=100) * 5
        out = agg.encode(_update(cid, [big]), info)
        assert np.linalg.norm(out.delta[0]) <= 1.0 + 1e-6
    assert state["inner"]["round_settings"]["dp_clip"] == 1.0


def test_rotation_before_quantizing_shrinks_the_error_of_a_spike():
    x = np.random.default_rng(3).normal(0, 0.1, 256)  # small values and one outlier
    x[3] = 10.0
    info = RoundInfo(1, 7)
    plain = Quantize(inner=Mean(), bits=2)
    rotated = Rotate(inner=Quantize(inner=Mean(), bits=2))
    err = {
        name: np.mean(
            [np.linalg.norm(a.encode(_update(c, [x]), info).delta[0] - x) for c in range(30)]
        )
        for name, a in [("plain", plain), ("rotated", rotated)]
    }
    assert err["rotated"] < err["plain"] / 3
    identity = Rotate(inner=Mean()).encode(_update(0, [x[:200].reshape(10, 20)]), info)
    np.testing.assert_allclose(identity.delta[0], x[:200].reshape(10, 20), atol=1e-5)


@pytest.mark.parametrize(
    "wrapper",
    [
        lambda i: Quantize(inner=i, bits=8),
        lambda i: Rotate(inner=i),
    ],
)
def test_wrappers_delegate_to_the_inner_aggregator(wrapper):
    agg = wrapper(SumPlusOne())
    state = agg.init([np.zeros(2)])
    assert state == {"inner": {"calls": 0}}
    enc = agg.encode(_update(0, [[3.0, 4.0]]), RoundInfo(1, 0))
    assert enc.metrics == {"encoded": 1.0}  # the inner encode ran
    delta, state, meas = agg.aggregate(
        [_update(0, [[3.0, 4.0]]), _update(1, [[1.0, 0.0]])], state, RNG
    )
    np.testing.assert_allclose(delta[0], [5.0, 5.0])
    assert state == {"inner": {"calls": 1}} and meas == {"inner": 7.0}


def test_wire_bytes_by_hand():
    params = [np.zeros((100, 9), np.float32), np.zeros(100, np.float32)]  # d = 1000
    mean = Mean(weighting="uniform")
    assert wire_bytes(mean, params) == 4000
    assert wire_bytes(Quantize(inner=mean, bits=8), params) == 900 + 100 + 2 * 12
    assert wire_bytes(Quantize(inner=mean, bits=4), params) == 450 + 50 + 2 * 12
    assert wire_bytes(Rotate(inner=Quantize(inner=mean, bits=4)), params) == 1024 // 2 + 12
    secure = SecureAggregation(inner=mean, clip=1.0, bits=16)
    assert wire_bytes(secure, params, clients=10) == 1000 * (16 + 4) // 8


def test_config_composes_or_refuses():
    cfg = config.load(
        {"data": {"num_clients": 8}}, ["compression.quantize_bits=4", "compression.rotate=true"]
    )
    agg = build_strategy(cfg).aggregator
    assert isinstance(agg, Rotate) and isinstance(agg.inner, Quantize) and agg.inner.bits == 4
    # Under secure aggregation the quantization is secure aggregation's own.
    sa = ["privacy.secure_aggregation.enabled=true", "compression.quantize_bits=12"]
    secure = build_strategy(config.load({"data": {"num_clients": 8}}, sa)).aggregator
    assert isinstance(secure, SecureAggregation) and secure.bits == 12
    for extra, keys in [
        (
            ["privacy.secure_aggregation.enabled=true", "compression.topk=0.1"],
            ("compression.topk", "privacy.secure_aggregation.enabled"),
        ),
        (
            ["privacy.secure_aggregation.enabled=true", "compression.rotate=true"],
            ("compression.rotate", "privacy.secure_aggregation.enabled"),
        ),
        (
            [*sa, "privacy.secure_aggregation.bits=16"],
            ("compression.quantize_bits", "privacy.secure_aggregation.bits"),
        ),
        (
            ["compression.topk=0.1", "compression.quantize_bits=8"],
            ("compression.topk", "compression.quantize_bits"),
        ),
        (
            [
                "compression.topk=0.1",
                "privacy.dp.mode=local",
                "privacy.dp.delta=1e-5",
                "privacy.dp.noise_multiplier=1",
            ],
            ("compression.topk", "privacy.dp.mode"),
        ),
    ]:
        with pytest.raises(ConfigError) as err:
            config.load({"data": {"num_clients": 8}}, extra)
        assert all(k in str(err.value) for k in keys) and "\n" not in str(err.value)
