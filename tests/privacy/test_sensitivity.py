"""Invariant 2: the sensitivity that is accounted is the one that is summed.

Each test adds one client to a fixed cohort, measures how far the aggregator's output
really moves, and divides its noise std by that shift: the result is the noise
multiplier the mechanism truly has, and it must be at least the one the ledger uses.
"""

import math

import numpy as np
import pytest

from fedray import api, config
from fedray.aggregators import CentralDP, Mean, SecureAggregation, client_settings
from fedray.config import build
from fedray.records import ClientUpdate, RoundInfo


@pytest.mark.slow
def test_adaptive_clipping_count_multiplier_is_the_one_accounted():
    m = 40.0
    cfg = config.load(
        {
            "data": {"num_clients": 400},
            "strategy": {"fraction_fit": 0.1},
            "privacy": {"dp": {"noise_multiplier": 1.0, "delta": 1e-5, "clip": "adaptive"}},
        }
    )
    from types import SimpleNamespace

    strategy = build.build_strategy(cfg)
    (agg,) = strategy.dp_mechanisms()
    hosts = SimpleNamespace(num_clients=400, host_info=[])
    accounted = build.ledger(cfg, strategy, hosts).count_noise_multiplier
    state = agg.init([np.zeros(3, np.float32)])
    info = RoundInfo(1, 0, num_sampled=1, settings=state["round_settings"])

    def enc(cid, x):
        return agg.encode(ClientUpdate(cid, [np.array([x, 0, 0], np.float32)], 5), info)

    others = [enc(i, 1.0 if i % 2 else 0.01) for i in range(40)]

    def counts(updates, seeds=range(4000)):
        out = []
        for s in seeds:
            _, _, meas = agg.aggregate(updates, state, np.random.default_rng(s))
            out.append((meas["dp/unclipped_fraction"] - 0.5) * m)  # the noised centred count
        return np.array(out)

    base = counts(others)
    for added in (enc(99, 0.01), enc(99, 100.0)):  # an unclipped and a clipped client
        shift = abs(counts([*others, added]).mean() - base.mean())
        measured = base.std() / shift
        assert measured == pytest.approx(accounted, rel=0.06), (measured, accounted)


@pytest.mark.parametrize("bits,dim", [(16, 100_000), (12, 100_000), (8, 1_000)])
def test_quantized_update_never_exceeds_the_dp_clip(bits, dim):
    # A unit-norm update spread evenly over every coordinate: the worst case for rounding.
    sa = SecureAggregation(inner=CentralDP(1.0, 10.0, 1.0), clip=1.0, bits=bits)
    state = sa.init([np.zeros(dim, np.float32)])
    info = RoundInfo(1, 0, num_sampled=1, settings=client_settings(sa, state))
    rng = np.random.default_rng(0)
    for trial in range(3):
        v = rng.choice([-1.0, 1.0], dim) if trial == 0 else rng.normal(size=dim)
        v = (v / np.linalg.norm(v)).astype(np.float32)
        masked = sa.encode(ClientUpdate(3, [v], 1), info).masked
        contribution = sa.decode(masked.astype(np.uint64), [3], state, info).total[0]
        # Adding this client moves the decoded sum by its contribution: at most C = 1,
        # so the noise z C is z times the real sensitivity, as accounted.
        assert np.linalg.norm(contribution.astype(np.float64)) <= 1.0 + 1e-9


def test_too_few_bits_for_the_model_are_refused_under_dp():
    sa = SecureAggregation(inner=CentralDP(1.0, 10.0, 1.0), clip=1.0, bits=8)
    with pytest.raises(ValueError, match=r"bits=8 is too coarse .* use bits >= 11"):
        sa.l2_bound(100_000)
    assert SecureAggregation(inner=Mean(weighting="uniform"), bits=8).l2_bound(10**6) == 1.0


@pytest.mark.keras
def test_dp_sgd_releases_no_non_trainable_state(tmp_path):
    pytest.importorskip("tensorflow")
    from fedray.client.host import ClientHost
    from fedray.client.spec import HostSpec
    from fedray.privacy import DPSGD
    from fedray.strategy import ClientOptions

    cfg = config.load(
        {
            "data": {"dataset": "blobs", "num_samples": 200, "num_clients": 2},
            "model": {"name": "tests.custom_models:batchnorm"},
            "client": {"batch_size": 16},
        }
    )
    dp = DPSGD(noise_multiplier=1.0, clip=1.0, noise_seed=0)
    host = ClientHost(HostSpec.from_config(cfg, (0, 1), Mean(), client=ClientOptions(dp_sgd=dp)))
    params = host.initial_params()
    trainable = [v.trainable for v in host.trainer.model.weights]
    assert not all(trainable)  # the BatchNorm moving statistics
    for update in host.fit([0, 1], params, RoundInfo(1, 0)):
        for delta, keep in zip(update.delta, trainable):
            if keep:
                assert np.abs(delta).max() > 0
            else:  # updated from raw examples in training: must not leave the host
                np.testing.assert_array_equal(delta, np.zeros_like(delta))
        assert update.metrics == {} and update.num_examples == 1  # B2: no loss, no n_k


@pytest.mark.keras
def test_dp_sgd_run_logs_no_training_metrics(tmp_path):
    pytest.importorskip("tensorflow")
    hist = api.run(
        {
            "rounds": 1,
            "data": {"dataset": "blobs", "num_clients": 2, "num_samples": 200},
            "model": {"name": "linear"},
            "client": {"batch_size": 16},
            "privacy": {
                "dp": {"mode": "dpsgd", "noise_multiplier": 1.1, "clip": 1.0, "delta": 1e-5}
            },
            "runtime": {"executor": "local", "progress": False, "clients_per_actor": 1},
        },
        out=tmp_path,
    )
    assert not [k for k in hist.rows[-1] if k.startswith(("fit/", "train/", "fed_eval/"))]
    assert math.isfinite(hist.summary["privacy"]["epsilon"])
