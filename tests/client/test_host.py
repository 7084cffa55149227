"""ClientHost and LocalExecutor in-process (TensorFlow, no Ray)."""

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from fedray import api, config
from fedray.aggregators import Mean
from fedray.client.host import ClientHost
from fedray.client.spec import HostSpec
from fedray.errors import ConfigError, DataError
from fedray.records import ClientFailure, ClientUpdate, RoundInfo

pytest.importorskip("tensorflow")


def _spec(overrides=(), ids=(0, 1), **kw):
    cfg = config.load({"rounds": 2, "data": {"dataset": "linreg", "num_clients": 2}}, overrides)
    return HostSpec.from_config(cfg, tuple(ids), Mean(), **kw)


@pytest.mark.keras
def test_host_fit_returns_deltas_and_resets_optimizer_but_not_learning_rate():
    host = ClientHost(_spec(["client.optimizer=adam", "client.learning_rate=0.05"]))
    info = host.ready()
    assert info["clients"] == [0, 1] and "examples" not in info  # n_k: only for DP-SGD
    params = host.initial_params()
    for p in params:
        p.setflags(write=False)  # as delivered by Ray's object store
    out = host.fit([0], params, RoundInfo(server_round=1, seed=0))
    assert isinstance(out[0], ClientUpdate)
    assert [d.shape for d in out[0].delta] == [p.shape for p in params]
    assert out[0].num_examples == 50 and np.isfinite(out[0].metrics["loss"])
    opt = host.trainer.model.optimizer
    assert int(opt.iterations.numpy()) == 2  # 50 examples, batch 32
    # Same params, client and round give the same update again: Adam's moments and
    # step count were restored to their initial values, the learning rate was kept ...
    again = host.fit([0], params, RoundInfo(server_round=1, seed=0))[0]
    assert all(np.array_equal(a, b) for a, b in zip(out[0].delta, again.delta))
    assert int(opt.iterations.numpy()) == 2
    assert float(opt.learning_rate.numpy()) == pytest.approx(0.05)
    assert float(np.abs(out[0].delta[0]).max()) > 0.01  # lr 0.05 really trained
    # ... while another round shuffles differently.
    other = host.fit([0], params, RoundInfo(server_round=2, seed=0))[0]
    assert not all(np.array_equal(a, b) for a, b in zip(out[0].delta, other.delta))


@pytest.mark.keras
def test_unknown_client_is_a_failure_not_a_crash():
    host = ClientHost(_spec(ids=(0,)))
    out = host.fit([1], host.initial_params(), RoundInfo(server_round=1, seed=0))
    assert isinstance(out[0], ClientFailure) and "client 1 is not hosted here" in out[0].reason


@pytest.mark.keras
def test_start_up_errors_are_delivered_by_ready(tmp_path):
    cfg = config.load({"data": {"dataset": "csv", "path": str(tmp_path / "none.csv")}})
    host = ClientHost(HostSpec.from_config(cfg, (0,), Mean()))
    with pytest.raises(DataError, match="file not found"):
        host.ready()


@pytest.mark.keras
def test_same_seed_gives_identical_initial_models_on_every_host():
    a = ClientHost(_spec(ids=(0,))).initial_params()
    b = ClientHost(_spec(ids=(1,))).initial_params()
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.slow
def test_thread_pools_are_capped_before_tensorflow_starts():
    """A host's TensorFlow: one thread per pool, and no scikit-learn loaded for Keras.

    Keras' scikit-learn wrappers cost every host process ~1 s of start-up; the host
    leaves them out, and scikit-learn still imports normally afterwards.
    """
    code = (
        "import sys\n"
        "from fedray.client.devices import configure_tensorflow\n"
        "configure_tensorflow(1, verbose=False)\n"
        "import tensorflow as tf\n"
        "print(tf.config.threading.get_intra_op_parallelism_threads(),"
        " tf.config.threading.get_inter_op_parallelism_threads(), 'sklearn' in sys.modules)\n"
        "from sklearn.datasets import load_digits\n"
        "print(load_digits().data.shape[1])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "1", "False", "64"]


@pytest.mark.keras
def test_linreg_hello_world_in_process(tmp_path, linreg_config):
    hist = api.run(
        linreg_config, out=tmp_path, overrides=["runtime.executor=local", "runtime.progress=false"]
    )
    (y0,), (y10,) = hist.summary["predictions"]["outputs"]
    assert abs(y0 - 1) < 1.5 and abs(y10 - 31) < 1.5
    assert {p.name for p in tmp_path.iterdir()} >= {"metrics.csv", "summary.json", "model.keras"}
    df = hist.metrics
    assert list(df["round"]) == list(range(1, 11))
    for col in [
        "time/round_s",
        "clients/ok",
        "clients/failed",
        "fit/loss",
        "eval/loss",
        "eval/mae",
    ]:
        assert col in df.columns
    assert df["eval/loss"].iloc[-1] < df["eval/loss"].iloc[0]
    model = hist.model()
    pred = model.predict(np.array([[0.0], [10.0]], np.float32), verbose=0)
    np.testing.assert_allclose(pred[:, 0], [y0, y10], rtol=1e-5)


@pytest.mark.keras
def test_packed_and_dedicated_hosts_give_the_same_model(tmp_path, linreg_config):
    common = ["runtime.executor=local", "runtime.progress=false", "rounds=3", "data.num_clients=4"]
    a = api.run(
        linreg_config, out=tmp_path / "a", overrides=[*common, "runtime.clients_per_actor=1"]
    )
    b = api.run(
        linreg_config, out=tmp_path / "b", overrides=[*common, "runtime.clients_per_actor=3"]
    )
    for x, y in zip(a.params, b.params):
        np.testing.assert_array_equal(x, y)


def dropout_mlp(input_shape, num_outputs):
    """A user model with dropout (its RNG must not depend on how clients are packed)."""
    import keras

    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(num_outputs, activation="softmax"),
        ]
    )


@pytest.mark.keras
def test_dropout_models_are_identical_packed_and_dedicated(tmp_path):
    cfg = {
        "rounds": 2,
        "data": {"dataset": "digits", "num_clients": 3},
        "model": {"name": "tests.client.test_host:dropout_mlp"},
        "runtime": {"executor": "local", "progress": False},
    }
    runs = [
        api.run(cfg, out=tmp_path / str(n), overrides=[f"runtime.clients_per_actor={n}"])
        for n in (1, 3)
    ]
    for x, y in zip(runs[0].params, runs[1].params):
        np.testing.assert_array_equal(x, y)


@pytest.mark.keras
def test_classification_with_federated_evaluation(tmp_path):
    cfg = {
        "rounds": 4,
        "data": {
            "dataset": "digits",
            "num_clients": 3,
            "partition": "dirichlet",
            "alpha": 1.0,
            "client_test_fraction": 0.2,
        },
        "model": {"name": "mlp", "hidden": [32]},
        "client": {"optimizer": "adam", "learning_rate": 0.01, "local_epochs": 2},
        "evaluation": {"federated_every": 2},
        "runtime": {"executor": "local", "progress": False, "clients_per_actor": 3},
    }
    hist = api.run(cfg, out=tmp_path)
    final = hist.final
    assert final["eval/accuracy"] > 0.7  # chance is 0.1
    assert final["fed_eval/clients"] == 3 and final["fed_eval/accuracy"] > 0.7


@pytest.mark.keras
def test_cnn_and_custom_functional_builder(tmp_path):
    base = {
        "rounds": 1,
        "runtime": {"executor": "local", "progress": False, "clients_per_actor": 2},
    }
    cnn = api.run(
        {**base, "data": {"dataset": "digits"}, "model": {"name": "cnn"}}, out=tmp_path / "c"
    )
    assert 0 <= cnn.final["eval/accuracy"] <= 1
    custom = api.run(
        {**base, "data": {"dataset": "linreg"}, "model": {"name": "tests.custom_models:build"}},
        out=tmp_path / "f",
    )
    assert "eval/mse" in custom.final  # the builder's own compiled metric is kept
    assert custom.model().name == "custom_functional"


@pytest.mark.keras
def test_a_users_train_step_with_tensor_control_flow_still_goes_through_autograph(tmp_path):
    # The hosts' own loops are traced without AutoGraph (faster starts); a model's own
    # train_step is converted as Keras's fit would, so `if tensor:` in it still works.
    run = api.run(
        {
            "rounds": 3,
            "data": {"dataset": "linreg"},
            "model": {"name": "tests.custom_models:skips_nonfinite"},
            "runtime": {"executor": "local", "progress": False},
        },
        out=tmp_path,
    )
    losses = [r["fit/loss"] for r in run.rows]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]  # it trained


@pytest.mark.keras
def test_bad_builders_and_cnn_on_tabular_data(tmp_path):
    base = {"rounds": 1, "runtime": {"executor": "local", "progress": False}}
    with pytest.raises(ConfigError, match="returned str; expected a keras.Model"):
        api.run({**base, "model": {"name": "tests.custom_models:not_a_model"}}, out=tmp_path)
    with pytest.raises(ConfigError, match="cannot import module 'no_such_pkg'"):
        api.run({**base, "model": {"name": "no_such_pkg:build"}}, out=tmp_path)
    with pytest.raises(ConfigError, match="'cnn' needs image inputs.*input shape \\(1,\\)"):
        api.run({**base, "model": {"name": "cnn"}}, out=tmp_path)


@pytest.mark.keras
def test_local_training_is_exact_gradient_descent_on_full_batches():
    # batch_size >= shard size: each epoch is one full-batch SGD step, independent of shuffling.
    spec = _spec(
        ["client.batch_size=64", "client.local_epochs=2", "client.learning_rate=0.001"], ids=(0,)
    )
    host = ClientHost(spec)
    x = host.shards[0].x.astype(np.float64)[:, 0]
    y = host.shards[0].y.astype(np.float64)[:, 0]
    w, b = 0.5, -0.25
    params = [np.array([[w]], np.float32), np.array([b], np.float32)]
    update = host.fit([0], params, RoundInfo(server_round=1, seed=0))[0]
    lr = 0.001
    for _ in range(2):
        err = w * x + b - y
        w, b = w - lr * 2 * np.mean(err * x), b - lr * 2 * np.mean(err)
    np.testing.assert_allclose(update.delta[0][0, 0], w - 0.5, rtol=1e-4)
    np.testing.assert_allclose(update.delta[1][0], b + 0.25, rtol=1e-4)


@pytest.mark.keras
def test_fedprox_step_is_gradient_descent_on_the_proximal_objective():
    from fedray.features import FedProx

    mu, lr = 5.0, 0.001
    spec = _spec(
        ["client.batch_size=64", "client.local_epochs=2", f"client.learning_rate={lr}"], ids=(0,)
    )
    host = ClientHost(replace(spec, features=(FedProx(mu),)))
    x = host.shards[0].x.astype(np.float64)[:, 0]
    y = host.shards[0].y.astype(np.float64)[:, 0]
    wg, bg = 0.5, -0.25
    params = [np.array([[wg]], np.float32), np.array([bg], np.float32)]
    update = host.fit([0], params, RoundInfo(server_round=1, seed=0))[0]
    w, b = wg, bg
    losses = []
    for _ in range(2):  # two full-batch steps on mse + mu/2 * ||(w, b) - (wg, bg)||^2
        err = w * x + b - y
        losses.append(np.mean(err**2))
        w, b = (
            w - lr * (2 * np.mean(err * x) + mu * (w - wg)),
            b - lr * (2 * np.mean(err) + mu * (b - bg)),
        )
    np.testing.assert_allclose(update.delta[0][0, 0], w - wg, rtol=1e-4)
    np.testing.assert_allclose(update.delta[1][0], b - bg, rtol=1e-4)
    # The reported loss is the task loss (without the proximal term), averaged over examples.
    np.testing.assert_allclose(update.metrics["loss"], np.mean(losses), rtol=1e-4)


@pytest.mark.keras
def test_fedprox_with_tiny_mu_matches_fedavg_and_mu_zero_is_fedavg(tmp_path, linreg_config):
    common = ["runtime.executor=local", "runtime.progress=false", "rounds=3"]
    avg = api.run(linreg_config, out=tmp_path / "a", overrides=common)
    zero = api.run(
        linreg_config,
        out=tmp_path / "z",
        overrides=[*common, "strategy.name=fedprox", "strategy.proximal_mu=0"],
    )
    tiny = api.run(
        linreg_config,
        out=tmp_path / "t",
        overrides=[*common, "strategy.name=fedprox", "strategy.proximal_mu=1e-9"],
    )
    for a, z, t in zip(avg.params, zero.params, tiny.params):
        np.testing.assert_array_equal(a, z)  # mu = 0: exactly FedAvg
        np.testing.assert_allclose(a, t, rtol=1e-5, atol=1e-6)  # the proximal path agrees


@pytest.mark.keras
def test_stragglers_do_whole_epochs_of_their_work_exactly():
    base = ["data.dataset=digits", "data.num_clients=4", "client.local_epochs=4"]
    stragglers = ClientHost(
        HostSpec.from_config(
            config.load({}, [*base, "faults.straggler_fraction=1"]), (0, 1, 2, 3), Mean()
        )
    )
    params = stragglers.initial_params()
    info = RoundInfo(server_round=2, seed=0)
    for update in stragglers.fit([0, 1, 2, 3], params, info):
        frac = update.metrics["work_fraction"]
        epochs_done = round(frac * 4)
        assert epochs_done in (1, 2, 3) and frac == epochs_done / 4
        # The same client with E = epochs_done and no stragglers computes the same update.
        cfg = config.load({}, [*base[:2], f"client.local_epochs={epochs_done}"])
        honest = ClientHost(HostSpec.from_config(cfg, (update.client_id,), Mean()))
        ref = honest.fit([update.client_id], params, info)[0]
        for a, b in zip(update.delta, ref.delta):
            np.testing.assert_array_equal(a, b)


@pytest.mark.keras
def test_dropped_stragglers_are_failures_with_a_reason():
    cfg = config.load(
        {}, ["data.num_clients=2", "faults.straggler_fraction=1", "faults.drop_stragglers=true"]
    )
    host = ClientHost(HostSpec.from_config(cfg, (0, 1), Mean()))
    out = host.fit([0, 1], host.initial_params(), RoundInfo(server_round=1, seed=0))
    assert all(isinstance(r, ClientFailure) for r in out)
    assert out[0].reason.startswith("straggler dropped: 1 of 2 local steps")


@pytest.mark.keras
def test_server_test_set_in_parts_adds_up_to_the_whole_bit_for_bit():
    """Hosts share the server evaluation when every metric is a mean (loss, accuracy)."""
    from fedray.records import merge_means

    cfg = config.load(
        {"data": {"dataset": "blobs", "num_clients": 2, "num_samples": 12_000}}
    )  # a 2,400-row test set: 3 batches of 1,024
    host = ClientHost(HostSpec.from_config(cfg, (0, 1), Mean(), with_test_set=True))
    params = host.initial_params()
    assert host.ready()["server_parts"] == 3  # batches to share
    whole = host.evaluate(params)  # one part: batch by batch, as when hosts share it
    for of in (2, 3, 5):  # 5 parts of 3 batches: some parts are empty
        parts = [host.evaluate_part(params, p, of) for p in range(of)]
        assert [p.first_batch for p in parts] == [3 * p // of for p in range(of)]
        assert merge_means(parts[::-1]) == whole
    # Against the data: accuracy is exactly the share of argmax hits, and the loss is
    # the mean cross-entropy, as Keras's own whole-set evaluation computes it.
    trainer = host.trainer
    x, y = (np.asarray(t) for t in trainer._server_test)
    hits = np.argmax(trainer.predict(params, x), axis=1) == y.ravel()
    assert whole["accuracy"] == hits.sum() / len(y)
    keras_whole = trainer.evaluate(params, "server")[1]
    assert whole["loss"] == pytest.approx(keras_whole["loss"], rel=1e-6)


@pytest.mark.keras
def test_a_metric_that_is_no_mean_keeps_the_test_set_whole():
    cfg = config.load(
        {"data": {"dataset": "linreg", "num_clients": 2}, "client": {"metrics": ["r2_score"]}}
    )
    host = ClientHost(HostSpec.from_config(cfg, (0, 1), Mean(), with_test_set=True))
    params = host.initial_params()
    assert host.ready()["server_parts"] == 0
    assert host.evaluate_part(params, 0, 2) is None
    assert set(host.evaluate(params)) == {"loss", "r2_score"}


@pytest.mark.keras
def test_the_trainers_data_tensor_is_the_hosts_table_not_a_copy():
    from fedray.client.trainer import KerasTrainer
    from fedray.data import load_host_data

    spec = _spec(ids=(1, 0))
    data = load_host_data(spec.data, spec.seed, spec.client_ids, with_test_set=False)
    trainer = KerasTrainer(spec, data)
    x_all, _ = data.rows
    x_all[3, 0] = 1234.5  # the shared table: concatenating shards made a second copy
    assert float(trainer._x_all[3, 0]) == 1234.5
    assert trainer._rows == {1: (0, len(data.shards[1].x)), 0: (len(data.shards[1].x), 50)}
