"""DP-SGD inside clients: per-example clipping, Poisson batches, noise, accounting."""

import math

import numpy as np
import pytest

from fedray import config
from fedray.aggregators import Mean
from fedray.features import FedProx, Scaffold
from fedray.privacy import DPSGD
from fedray.records import RoundInfo
from fedray.strategy import ClientOptions

tf = pytest.importorskip("tensorflow")
pytest.importorskip("dp_accounting")


def _host(dp, *overrides, n=64):
    from fedray.client.host import ClientHost
    from fedray.client.spec import HostSpec

    cfg = config.load(
        {
            "data": {
                "dataset": "blobs",
                "num_samples": n * 2,
                "num_clients": 1,
                "test_fraction": 0.5,
            },
            "model": {"name": "mlp", "hidden": [16]},
            "client": {"optimizer": "sgd", "learning_rate": 1.0, "batch_size": n},
        },
        list(overrides),
    )
    return ClientHost(HostSpec.from_config(cfg, (0,), Mean(), client=ClientOptions(dp_sgd=dp)))


def _norm(delta):
    return math.sqrt(sum(float(np.sum(np.square(d, dtype=np.float64))) for d in delta))


@pytest.mark.keras
def test_without_noise_or_clipping_a_full_poisson_batch_is_one_plain_sgd_step():
    # B = n: q = 1, so every example is in the one batch of the epoch.
    plain, private = _host(None), _host(DPSGD(noise_multiplier=0.0, clip=1e9, noise_seed=1))
    params = plain.initial_params()
    a = plain.fit([0], params, RoundInfo(1, 0))[0].delta
    b = private.fit([0], params, RoundInfo(1, 0))[0].delta
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=2e-4, atol=1e-6)


@pytest.mark.keras
def test_per_example_gradients_are_clipped():
    c = 1e-3
    host = _host(DPSGD(noise_multiplier=0.0, clip=c, noise_seed=1))
    params = host.initial_params()
    delta = host.fit([0], params, RoundInfo(1, 0))[0].delta
    # lr 1, one step: |delta| <= sum of k clipped gradients / B = c (k = n = B here) ...
    assert 0 < _norm(delta) <= c * (1 + 1e-4)
    # ... while the same step without clipping is far longer.
    free = _host(DPSGD(noise_multiplier=0.0, clip=1e9, noise_seed=1))
    assert _norm(free.fit([0], params, RoundInfo(1, 0))[0].delta) > 100 * c


@pytest.mark.keras
def test_noise_std_is_z_c_over_b_per_coordinate():
    z, c, n = 2.0, 1e-4, 64
    host = _host(DPSGD(noise_multiplier=z, clip=c, noise_seed=3), n=n)
    delta = host.fit([0], host.initial_params(), RoundInfo(1, 0))[0].delta
    flat = np.concatenate([d.ravel() for d in delta]).astype(np.float64)
    # The clipped sum moves each coordinate by at most c / B; the noise dominates.
    assert float(np.std(flat)) == pytest.approx(z * c / n, rel=0.05)
    secret = _host(DPSGD(noise_multiplier=z, clip=c), n=n)  # no seed: noise from `secrets`
    d1 = secret.fit([0], host.initial_params(), RoundInfo(1, 0))[0].delta
    d2 = secret.fit([0], host.initial_params(), RoundInfo(1, 0))[0].delta
    assert not np.array_equal(d1[0], d2[0])


@pytest.mark.keras
def test_poisson_batches_vary_in_size_and_accounting_is_per_client(tmp_path):
    from fedray import api
    from fedray.privacy import dpfedavg_epsilon

    hist = api.run(
        {
            "rounds": 3,
            "data": {"dataset": "digits", "num_clients": 4},
            "model": {"name": "mlp", "hidden": [16]},
            "client": {"batch_size": 16, "local_epochs": 1},
            "privacy": {
                "dp": {
                    "mode": "dpsgd",
                    "noise_multiplier": 1.1,
                    "clip": 1.0,
                    "delta": 1e-5,
                    "noise_seed": 0,
                }
            },
            "runtime": {"executor": "local", "progress": False, "clients_per_actor": 4},
        },
        out=tmp_path,
    )
    p = hist.summary["privacy"]
    sizes = {int(c): round(16 / q) for c, q in p["sampling_rate"].items()}
    for cid, eps in p["epsilon_per_client"].items():
        n = sizes[int(cid)]
        want = dpfedavg_epsilon(1.1, 16 / n, 3 * math.ceil(n / 16), 1e-5)
        assert eps == pytest.approx(want, rel=1e-6)
    assert p["epsilon"] == max(p["epsilon_per_client"].values())
    assert np.isfinite(hist.final["eval/loss"])


def _linreg_hosts(dp, features, x, y, epochs):
    """A Keras host and a numpy host of one client holding ``(x, y)``: the same shard."""
    from dataclasses import replace

    from fedray.client.host import ClientHost
    from fedray.client.spec import HostSpec
    from fedray.data.arrays import from_clients
    from tests.fakes import NumpyTrainer

    cfg = config.load(
        {
            "data": {"dataset": "memory", "num_clients": 1},
            "model": {"name": "linear"},
            "client": {
                "optimizer": "sgd",
                "learning_rate": 0.01,
                "batch_size": len(x),
                "local_epochs": epochs,
                "loss": "mse",
                "metrics": [],
            },
        }
    )
    source = from_clients([(x, y)], data=cfg.data)
    options = ClientOptions(dp_sgd=dp)
    agg = Mean(weighting="uniform")
    spec = HostSpec.from_config(
        cfg, (0,), agg, client=options, source=source, features=tuple(features)
    )
    return ClientHost(spec), ClientHost(replace(spec, trainer=NumpyTrainer))


@pytest.mark.keras
@pytest.mark.parametrize(
    "features",
    [(FedProx(5.0),), (Scaffold(),)],
    ids=["fedprox", "scaffold"],
)
def test_fedprox_and_scaffold_apply_under_dp_sgd_as_the_numpy_reference_does(features):
    # Before, DP-SGD's Keras step ignored both: mu = 0 and mu = 100 gave the same update.
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 10, (32, 1)).astype(np.float32)
    y = (3 * x + 1).astype(np.float32)
    # z = 0, an unreachable clip and B = n (q = 1): DP-SGD is full-batch gradient descent.
    dp = DPSGD(noise_multiplier=0.0, clip=1e9, noise_seed=1)
    keras_host, numpy_host = _linreg_hosts(dp, features, x, y, epochs=4)
    params = [np.array([[0.5]], np.float32), np.array([0.2], np.float32)]
    downs = ([np.array([[0.7]], np.float32), np.array([-0.3], np.float32)],)  # SCAFFOLD's c
    downs = downs if isinstance(features[0], Scaffold) else (None,)
    info = RoundInfo(1, 0)
    got = keras_host.fit([0], params, info, downs)[0].delta
    want = numpy_host.fit([0], params, info, downs)[0].delta
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    plain_host, _ = _linreg_hosts(dp, (), x, y, epochs=4)
    plain = plain_host.fit([0], params, info)[0].delta
    assert not np.allclose(got[0], plain[0], rtol=1e-3)  # the piece changed the update


@pytest.mark.keras
def test_one_non_finite_example_counts_for_nothing_in_dp_sgd():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 10, (32, 1)).astype(np.float32)
    y = (3 * x + 1).astype(np.float32)
    dp = DPSGD(noise_multiplier=0.0, clip=1.0, noise_seed=1)
    params = [np.array([[0.5]], np.float32), np.array([0.2], np.float32)]
    clean, _ = _linreg_hosts(dp, (), x, y, epochs=1)
    want = clean.fit([0], params, RoundInfo(1, 0))[0].delta
    x_bad = x.copy()
    x_bad[3] = np.inf  # a sensor glitch in one row
    y_bad = y.copy()
    y_bad[3] = 3 * 0.0 + 1  # whatever the label, the row's gradient is not finite
    bad, _ = _linreg_hosts(dp, (), x_bad, y_bad, epochs=1)
    got = bad.fit([0], params, RoundInfo(1, 0))[0]
    assert got.client_id == 0 and all(np.isfinite(d).all() for d in got.delta)
    # Each kept example adds its clipped gradient (norm 1) / B: the bad row adds nothing,
    # so the update is the clean one less that row's clipped gradient.
    x3, y3 = float(x[3, 0]), float(y[3, 0])
    err = 0.5 * x3 + 0.2 - y3
    g = np.array([2 * err * x3, 2 * err])
    g = g / max(1.0, np.linalg.norm(g))
    expected = np.array([want[0][0, 0], want[1][0]]) + 0.01 * g / 32
    np.testing.assert_allclose([got.delta[0][0, 0], got.delta[1][0]], expected, rtol=1e-4)
