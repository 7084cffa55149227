"""The public entry points: ``fedray.fit`` on arrays in memory, ``fedray.run(strategy=...)``."""

import numpy as np
import pytest

import fedray
from fedray.aggregators import Mean, Median, NormBound, SecureAggregation
from fedray.errors import ConfigError, DataError
from fedray.strategy import Strategy

pytestmark = pytest.mark.keras

LOCAL = {"executor": "local", "progress": False}


def create_model():
    import keras

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    return model


def textbook():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 10, (100, 1)).astype("float32")
    y = (3 * x + 1 + rng.normal(0, 1, (100, 1))).astype("float32")
    return x, y


def test_fit_runs_the_textbook_example_on_its_own_arrays(tmp_path):
    x, y = textbook()
    history = fedray.fit(
        create_model,
        [(x[:50], y[:50]), (x[50:], y[50:])],
        rounds=10,
        strategy=fedray.strategy.fedavg(weighting="uniform"),
        out=tmp_path,
        runtime=LOCAL,
    )
    assert [r["round"] for r in history.rows] == list(range(1, 11))
    pred = history.model().predict(np.array([[0.0], [10.0]]), verbose=0).ravel()
    # 10 rounds of 2 epochs of SGD(0.01) on y = 3x + 1: the slope is learnt, the intercept
    # is still on its way (as in the config hello-world: 0.47 and 31.1).
    assert 0.0 < pred[0] < 1.5 and 29.5 < pred[1] < 32.5
    assert history.rows[-1]["fit/loss"] < 1.5
    assert history.summary["strategy"] == "fedavg"


def test_pairs_datasets_and_a_dataframe_give_the_same_model(tmp_path):
    import pandas as pd
    import tensorflow as tf

    x, y = textbook()
    pairs = [(x[:40], y[:40]), (x[40:], y[40:])]
    datasets = [tf.data.Dataset.from_tensor_slices(p).batch(7) for p in pairs]
    frame = pd.DataFrame({"x": x.ravel(), "label": y.ravel(), "site": [0] * 40 + [1] * 60})
    settings = {"rounds": 3, "runtime": LOCAL, "client": {"batch_size": 8}}
    a = fedray.fit(create_model, pairs, out=tmp_path / "a", **settings)
    b = fedray.fit(create_model, datasets, out=tmp_path / "b", **settings)
    c = fedray.fit(create_model, frame, client_column="site", out=tmp_path / "c", **settings)
    for other in (b, c):
        for p, q in zip(a.params, other.params, strict=True):
            np.testing.assert_array_equal(p, q)


def test_fit_evaluates_on_a_test_set_and_compiles_an_uncompiled_model(tmp_path):
    import keras

    def uncompiled():
        return keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])

    x, y = textbook()
    history = fedray.fit(
        uncompiled,
        [(x[:50], y[:50]), (x[50:80], y[50:80])],
        rounds=2,
        test=(x[80:], y[80:]),
        out=tmp_path,
        runtime=LOCAL,
        client={"learning_rate": 0.01},
    )
    assert "eval/loss" in history.rows[-1] and np.isfinite(history.rows[-1]["eval/loss"])


def test_fit_refuses_bad_clients_in_one_line():
    x, y = textbook()
    with pytest.raises(DataError, match=r"clients\[1\]: x has 10 rows and y has 9"):
        fedray.fit(create_model, [(x, y), (x[:10], y[:9])], rounds=1, runtime=LOCAL)
    with pytest.raises(ConfigError, match="client.batch_size"):
        fedray.fit(create_model, [(x, y)], rounds=1, client={"batch_size": 0})


def test_a_config_cannot_name_in_memory_data(tmp_path):
    with pytest.raises(ConfigError, match="data.dataset='memory' is for arrays passed to fedray"):
        fedray.run({"data": {"dataset": "memory"}, "runtime": LOCAL}, out=tmp_path)


def test_run_takes_a_hand_composed_strategy_and_equals_the_config_route(tmp_path):
    base = {"rounds": 2, "data": {"num_clients": 4}, "runtime": LOCAL}
    composed = Strategy(aggregator=NormBound(Median(), max_norm=1.0), name="median-bounded")
    a = fedray.run(base, strategy=composed, out=tmp_path / "a")
    b = fedray.run(
        {**base, "strategy": {"name": "fedmedian", "norm_bound": 1.0}}, out=tmp_path / "b"
    )
    for p, q in zip(a.params, b.params, strict=True):
        np.testing.assert_array_equal(p, q)
    assert a.summary["strategy"] == "median-bounded"
    assert a.rows[-1]["agg/clipped_fraction"] >= 0


def test_run_refuses_a_hand_composed_strategy_that_cannot_work(tmp_path):
    bad = Strategy(aggregator=NormBound(SecureAggregation(Mean(weighting="uniform"))))
    with pytest.raises(ConfigError, match="strategy.norm_bound=1.0"):
        fedray.run({"runtime": LOCAL}, strategy=bad, out=tmp_path)


def test_fit_takes_the_strategy_section_as_a_dict_like_every_other_section(tmp_path):
    x, y = textbook()
    history = fedray.fit(
        create_model,
        [(x[:50], y[:50]), (x[50:], y[50:])],
        rounds=1,
        strategy={"name": "fedprox", "proximal_mu": 0.1},
        out=tmp_path,
        runtime=LOCAL,
    )
    assert history.summary["strategy"] == "fedprox"
    assert history.summary["config"]["strategy"]["proximal_mu"] == 0.1
