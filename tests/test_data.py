import numpy as np
import pandas as pd
import pytest

from fedray import config, data
from fedray.errors import DataError


def _cfg(**data_kw):
    return config.load({"data": data_kw}).data


def test_linreg_follows_y_equals_3x_plus_1():
    ds = data.load_dataset(_cfg(dataset="linreg", num_samples=2000), seed=0)
    assert ds.x_train.shape == (2000, 1) and ds.task == "regression"
    assert ds.x_train.min() >= 0 and ds.x_train.max() <= 10
    slope, intercept = np.polyfit(ds.x_train[:, 0], ds.y_train[:, 0], 1)
    assert abs(slope - 3) < 0.05 and abs(intercept - 1) < 0.2
    resid = ds.y_train[:, 0] - (3 * ds.x_train[:, 0] + 1)
    assert abs(resid.std() - 1) < 0.05


def test_linreg_hello_world_split_is_even_and_seeded():
    cfg = _cfg(dataset="linreg", num_samples=100, num_clients=2)
    a = data.load_host_data(cfg, 0, [0, 1], with_test_set=True)
    b = data.load_host_data(cfg, 0, [1], with_test_set=False)
    assert [len(a.shards[c].x) for c in (0, 1)] == [50, 50]
    assert np.array_equal(a.shards[1].x, b.shards[1].x)
    assert b.x_test is None and a.x_test is not None


def test_synthetic_natural_clients():
    cfg = config.load(
        {"data": {"dataset": "synthetic", "num_clients": 5, "partition": "column"}}
    ).data
    ds = data.load_dataset(cfg, seed=1)
    assert ds.x_train.shape[1] == 60 and ds.num_classes == 10
    counts = np.bincount(ds.groups["client"], minlength=5)
    assert (counts >= 45).all()  # lognormal + 50 per device, 90% to train
    parts = data.partition_indices(ds, cfg, 1)
    assert [len(p) for p in parts] == counts.tolist()
    assert ds.y_train.min() >= 0 and ds.y_train.max() < 10
    # Devices differ: their feature means are not the same.
    means = [ds.x_train[p].mean() for p in parts]
    assert np.std(means) > 0.1


def test_blobs_matches_the_benchmark_spec():
    ds = data.load_dataset(_cfg(dataset="blobs"), seed=0)
    assert ds.x_train.shape == (16000, 60) and ds.x_test.shape == (4000, 60)
    assert ds.num_classes == 10
    # Within-class spread is N(0, 1).
    cls = ds.x_train[ds.y_train == 0]
    assert abs(cls.std(axis=0).mean() - 1.0) < 0.05


def test_digits():
    ds = data.load_dataset(_cfg(dataset="digits"), seed=0)
    assert ds.x_train.shape[1:] == (8, 8, 1) and ds.num_classes == 10
    assert len(ds.x_train) + len(ds.x_test) == 1797
    assert ds.x_train.min() >= 0 and ds.x_train.max() <= 1


def test_npz(tmp_path):
    p = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(p, x_train=rng.normal(size=(40, 3)), y_train=rng.integers(0, 4, 40))
    ds = data.load_dataset(_cfg(dataset="npz", path=str(p), test_fraction=0.25), seed=0)
    assert len(ds.x_train) == 30 and len(ds.x_test) == 10 and ds.task == "classification"
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros(3))
    with pytest.raises(DataError, match="lacks array 'x_train'"):
        data.load_dataset(_cfg(dataset="npz", path=str(bad)), seed=0)


def _table(n=60):
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "a": rng.normal(size=n),
            "b": rng.normal(size=n),
            "hospital": rng.choice(["h1", "h2", "h3"], n),
            "label": rng.integers(0, 2, n),
        }
    )


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_table_with_column_partition(tmp_path, kind):
    df = _table()
    p = tmp_path / f"t.{kind}"
    df.to_csv(p, index=False) if kind == "csv" else df.to_parquet(p)
    cfg = _cfg(dataset=kind, path=str(p), partition="column", column="hospital", num_clients=3)
    ds = data.load_dataset(cfg, seed=0)
    assert ds.x_train.shape[1] == 2  # label and partition column are not features
    parts = data.partition_indices(ds, cfg, 0)
    # Each client holds exactly one hospital's training rows.
    assert sorted(len(np.unique(ds.groups["hospital"][p])) for p in parts) == [1, 1, 1]
    wrong = cfg.model_copy(update={"num_clients": 2})
    with pytest.raises(DataError, match="data.num_clients=2 but column 'hospital' has 3 distinct"):
        data.partition_indices(ds, wrong, 0)


def test_malformed_tables_get_clear_errors(tmp_path):
    df = _table()
    p = tmp_path / "nolabel.csv"
    df.drop(columns=["label"]).to_csv(p, index=False)
    with pytest.raises(DataError, match="has no label column 'label'.*columns are: a, b, hospital"):
        data.load_dataset(_cfg(dataset="csv", path=str(p)), seed=0)
    p2 = tmp_path / "text.csv"
    df.to_csv(p2, index=False)
    with pytest.raises(DataError, match="not numeric: hospital"):
        data.load_dataset(_cfg(dataset="csv", path=str(p2)), seed=0)
    p3 = tmp_path / "nan.csv"
    df2 = df.drop(columns=["hospital"])
    df2.loc[3, "a"] = np.nan
    df2.to_csv(p3, index=False)
    with pytest.raises(DataError, match="missing values in columns: a"):
        data.load_dataset(_cfg(dataset="csv", path=str(p3)), seed=0)
    with pytest.raises(DataError, match="file not found: '.*missing.csv'"):
        data.load_dataset(_cfg(dataset="csv", path=str(tmp_path / "missing.csv")), seed=0)
    p4 = tmp_path / "garbage.parquet"
    p4.write_text("not parquet")
    with pytest.raises(DataError, match="cannot read .* as parquet"):
        data.load_dataset(_cfg(dataset="parquet", path=str(p4)), seed=0)


def test_regression_partition_needs_labels():
    cfg = _cfg(dataset="linreg", partition="dirichlet")
    ds = data.load_dataset(cfg, 0)
    with pytest.raises(DataError, match="needs class labels"):
        data.partition_indices(ds, cfg, 0)


@pytest.mark.parametrize("name,shape", [("mnist", (28, 28)), ("cifar10", (32, 32, 3))])
def test_keras_image_datasets_from_a_cached_file(tmp_path, name, shape):
    rng = np.random.default_rng(0)
    p = tmp_path / f"{name}.npz"
    np.savez(
        p,
        x_train=rng.integers(0, 256, (20, *shape), dtype=np.uint8),
        y_train=rng.integers(0, 10, (20, 1)),
        x_test=rng.integers(0, 256, (5, *shape), dtype=np.uint8),
        y_test=rng.integers(0, 10, (5, 1)),
    )
    ds = data.load_dataset(_cfg(dataset=name, path=str(p)), seed=0)
    expected = shape if len(shape) == 3 else (*shape, 1)
    assert ds.x_train.shape == (20, *expected) and ds.y_train.shape == (20,)
    assert ds.x_train.min() >= 0.0 and ds.x_train.max() <= 1.0


@pytest.mark.keras
def test_mnist_without_path_uses_keras_datasets(monkeypatch):
    keras = pytest.importorskip("keras")
    rng = np.random.default_rng(0)
    fake = (
        (rng.integers(0, 256, (12, 28, 28), dtype=np.uint8), rng.integers(0, 10, 12)),
        (rng.integers(0, 256, (4, 28, 28), dtype=np.uint8), rng.integers(0, 10, 4)),
    )
    calls = []
    monkeypatch.setattr(keras.datasets.mnist, "load_data", lambda: calls.append(1) or fake)
    ds = data.load_dataset(_cfg(dataset="mnist"), seed=0)
    assert calls == [1] and ds.x_train.shape == (12, 28, 28, 1) and len(ds.x_test) == 4


def test_a_node_holding_only_its_own_clients_rows(tmp_path):
    # Site B's node holds only site B's file; client 1 (= site B) loads from it alone.
    df = _table()
    local = tmp_path / "site_b.csv"
    df[df.hospital == "h2"].to_csv(local, index=False)
    cfg = _cfg(
        dataset="csv",
        path=str(local),
        partition="column",
        column="hospital",
        column_values=["h1", "h2", "h3"],
        num_clients=3,
        num_classes=2,
    )
    hd = data.load_host_data(cfg, 0, [1], with_test_set=False)
    assert len(hd.shards[1].x) == round((df.hospital == "h2").sum() * 0.8)
    assert hd.info.num_outputs == 2  # fixed by data.num_classes, not by this node's labels
    with pytest.raises(DataError, match=r"client 0 \(hospital='h1'\) has no training rows"):
        data.load_host_data(cfg, 0, [0], with_test_set=False)


def test_column_values_must_name_every_client():
    from fedray.errors import ConfigError

    with pytest.raises(ConfigError, match="data.column_values has 2 values but data.num_clients=3"):
        _cfg(dataset="linreg", num_clients=3, column_values=["a", "b"])


def test_a_hosts_rows_are_one_aligned_table_and_its_shards_are_views_of_it():
    from fedray.data import load_dataset, load_host_data, partition_indices
    from fedray.tree import ALIGN

    cfg = config.load({"data": {"dataset": "blobs", "num_clients": 4, "num_samples": 400}}).data
    host = load_host_data(cfg, 0, [2, 0], with_test_set=False)
    x_all, y_all = host.rows
    assert x_all.ctypes.data % ALIGN == 0 and x_all.flags.c_contiguous
    ds = load_dataset(cfg, 0)
    parts = partition_indices(ds, cfg, 0)
    order = np.concatenate([parts[2], parts[0]])  # shard order, one after another
    np.testing.assert_array_equal(x_all, ds.x_train[order])
    np.testing.assert_array_equal(y_all, ds.y_train[order])
    assert list(host.shards) == [2, 0]
    assert all(
        np.shares_memory(s.x, x_all) and np.shares_memory(s.y, y_all) for s in host.shards.values()
    )
    # A local test split takes rows out of a shard: copies, so no shared table.
    split = config.load(
        {
            "data": {
                "dataset": "blobs",
                "num_clients": 4,
                "num_samples": 400,
                "client_test_fraction": 0.2,
            }
        }
    ).data
    assert load_host_data(split, 0, [0], with_test_set=False).rows is None


def test_a_regression_with_several_targets_asks_the_model_for_as_many_outputs(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 3)), rng.normal(size=(30, 2))
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y)
    cfg = config.load({"data": {"dataset": "npz", "path": str(tmp_path / "d.npz")}})
    info = data.load_dataset(cfg.data, 0).info
    # the built-in head is Dense(num_outputs): one output for two targets would broadcast
    assert (info.task, info.num_outputs) == ("regression", 2)
