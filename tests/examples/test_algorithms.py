"""The example algorithms (examples/algorithms/): written on the public API, each equals
a hand-written numpy reference, composes where its math allows, and is refused in one
line by its own declaration where it does not."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedray import api
from fedray.aggregators import Mean
from fedray.errors import ConfigError
from fedray.features import Feature
from fedray.strategy import Strategy

ROOT = Path(__file__).resolve().parents[2]
SIZES = (3, 5, 8)  # clients' rows: with batches of 2, they run 2, 3 and 4 local steps
POINTS = [(0.5, 1.0), (1.5, -1.0), (-1.0, 2.0)]  # each client's one (x, y), repeated
LR, ROUNDS = 0.05, 4


def _example(name):
    path = ROOT / "examples" / "algorithms" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # a dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def _config(tmp_path):
    """Three clients, each holding n_k copies of one point: every minibatch gradient is
    the full one, so local SGD is deterministic and the reference needs no shuffle."""
    rows = [(x, k, y) for k, ((x, y), n) in enumerate(zip(POINTS, SIZES)) for _ in range(n)]
    path = tmp_path / "points.csv"
    pd.DataFrame(rows, columns=["x", "site", "label"]).to_csv(path, index=False)
    return {
        "rounds": ROUNDS,
        "data": {
            "dataset": "csv",
            "path": str(path),
            "partition": "column",
            "column": "site",
            "num_clients": 3,
            "test_fraction": 0.0,
            "task": "regression",
        },
        "model": {"name": "linear"},
        "client": {
            "optimizer": "sgd",
            "learning_rate": LR,
            "local_epochs": 1,
            "batch_size": 2,
            "loss": "mse",
            "metrics": [],
        },
        "evaluation": {"every": 0},
        "runtime": {"executor": "local", "progress": False},
    }


def _initial():
    """NumpyTrainer's initial weights for seed 0 (tests/fakes.py)."""
    rng = np.random.default_rng(0)
    return np.array([rng.normal(0, 0.1, (1, 1)).astype(np.float32)[0, 0], 0.0])


def _local(theta, k, steps, mu=0.0, offset=(0.0, 0.0)):
    """Client k's local SGD from theta = (w, b) on mse, with a proximal term and offset."""
    (x, y), t = POINTS[k], np.array(theta, np.float64)
    for _ in range(steps):
        err = x * t[0] + t[1] - y
        grad = np.array([2 * x * err, 2 * err]) + mu * (t - theta) + np.asarray(offset)
        t = t - LR * grad
    return t


def _steps(k):
    return -(-SIZES[k] // 2)


def _run(tmp_path, feature, aggregator, name, fraction=1.0):
    strategy = Strategy(aggregator=aggregator, features=(feature,), fraction_fit=fraction)
    hist = api.run(_config(tmp_path), out=tmp_path / name, strategy=strategy)
    return np.array([hist.params[0].ravel()[0], hist.params[1][0]], np.float64), hist


def _samples(fraction):
    """Each round's participants: fedray's own sampler from the run's seed (not under test)."""
    rng, strategy = np.random.default_rng(0), Strategy(fraction_fit=fraction)
    return [strategy.sample_clients(3, rng) for _ in range(ROUNDS)]


def test_fednova_equals_its_numpy_reference(tmp_path, numpy_hosts):
    fednova = _example("fednova")
    got, hist = _run(tmp_path, fednova.FedNova(), Mean(weighting="examples"), "nova")
    theta, n = _initial(), np.array(SIZES, np.float64)
    for _ in range(ROUNDS):
        tau = np.array([_steps(k) for k in range(3)], np.float64)
        d = [(_local(theta, k, _steps(k)) - theta) / tau[k] for k in range(3)]
        theta = theta + (n @ tau / n.sum()) * sum(n[k] / n.sum() * d[k] for k in range(3))
    np.testing.assert_allclose(got, theta, rtol=1e-5)
    assert hist.rows[-1]["agg/tau_eff"] == pytest.approx((3 * 2 + 5 * 3 + 8 * 4) / 16)


def _feddyn_reference(alpha, theta0=None):
    """Acar et al.'s Algorithm 1, two of the three clients a round."""
    theta = _initial() if theta0 is None else theta0
    h, g = np.zeros(2), [np.zeros(2) for _ in range(3)]
    for ids in _samples(2 / 3):
        local = {k: _local(theta, k, _steps(k), alpha, -g[k]) for k in ids}
        for k in ids:  # only the participants' g_k move
            g[k] = g[k] - alpha * (local[k] - theta)
        h = h - alpha / 3 * sum(w - theta for w in local.values())  # 1/m: all registered
        theta = np.mean(list(local.values()), axis=0) - h / alpha
    return theta


def test_feddyn_equals_its_numpy_reference(tmp_path, numpy_hosts):
    feddyn = _example("feddyn")
    got, _ = _run(tmp_path, feddyn.FedDyn(0.3), Mean(weighting="uniform"), "dyn", 2 / 3)
    np.testing.assert_allclose(got, _feddyn_reference(0.3), rtol=1e-5)


@pytest.mark.keras
def test_feddyn_with_the_keras_trainer_equals_its_numpy_reference(tmp_path):
    # The traced step adds the proximal term and the offset together (FedDyn is the
    # first feature to use both): Keras' MSE gradient is the reference's 2 x (xw + b - y).
    pytest.importorskip("tensorflow")

    class Still(Feature):  # every client sends a zero delta: the run keeps the initial model
        def client_update(self, trained, down, state):
            return [np.zeros_like(d) for d in trained.delta], None, state

    theta0, _ = _run(tmp_path, Still(), Mean(weighting="uniform"), "still")
    feddyn = _example("feddyn")
    got, _ = _run(tmp_path, feddyn.FedDyn(0.3), Mean(weighting="uniform"), "dyn", 2 / 3)
    np.testing.assert_allclose(got, _feddyn_reference(0.3, theta0), rtol=1e-4)


def test_qffl_equals_its_numpy_reference(tmp_path, numpy_hosts):
    qffl = _example("qffl")
    q = 2.0
    got, _ = _run(tmp_path, qffl.QFFL(q), Mean(weighting="uniform"), "qffl", 2 / 3)
    theta = _initial()
    for ids in _samples(2 / 3):
        num, den = np.zeros(2), 0.0
        for k in ids:
            (x, y), lip = POINTS[k], 1 / LR
            loss = (x * theta[0] + theta[1] - y) ** 2 + 1e-10
            dw = lip * (theta - _local(theta, k, _steps(k)))
            num += loss**q * dw
            den += q * loss ** (q - 1) * dw @ dw + lip * loss**q
        theta = theta - num / den
    np.testing.assert_allclose(got, theta, rtol=1e-4)


DP = {"dp": {"delta": 1e-5}}


@pytest.mark.parametrize(
    ("name", "feature", "overrides", "words"),
    [
        ("qffl", "QFFL", ["privacy.dp.mode=central", "privacy.dp.noise_multiplier=1"], "loss"),
        ("qffl", "QFFL", ["privacy.secure_aggregation.enabled=true"], "secure_aggregation"),
        ("fednova", "FedNova", ["privacy.dp.mode=dpsgd", "privacy.dp.noise_multiplier=1"], "step"),
        ("feddyn", "FedDyn", ["runtime.balance=true"], "runtime.balance"),
    ],
)
def test_each_is_refused_by_its_own_declaration(tmp_path, name, feature, overrides, words):
    algorithm = getattr(_example(name), feature)()
    strategy = Strategy(aggregator=Mean(weighting="uniform"), features=(algorithm,))
    extra = ["privacy.dp.delta=1e-5", "privacy.dp.clip=1.0"] if "dp" in overrides[0] else []
    with pytest.raises(ConfigError) as err:
        api.run(
            _config(tmp_path), out=tmp_path / "r", strategy=strategy, overrides=[*overrides, *extra]
        )
    line = str(err.value)
    assert line.startswith(feature) and "does not work with" in line and words in line
    assert "\n" not in line and not (tmp_path / "r").exists()
