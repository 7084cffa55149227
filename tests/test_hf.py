"""Hugging Face datasets, offline: the shipped parquet stand-ins go through the same
``datasets.load_dataset`` path as ``flwrlabs/femnist`` and ``flwrlabs/shakespeare``."""

import numpy as np
import pytest

from fedray import api, config
from fedray.data import load_dataset, partition_indices
from fedray.errors import ConfigError, DataError
from tests.conftest import ROOT

pytest.importorskip("datasets")

HF = ROOT / "tests" / "data" / "hf"


def _cfg(name, *extra):
    cfg = config.load(
        ROOT / "experiments" / f"{name}.yaml",
        [
            "data.name=parquet",
            f"data.path={HF / name}.parquet",
            "data.num_clients=3",
            "strategy.clients_per_round=3",
            *extra,
        ],
    )
    return cfg


def test_femnist_images_by_writer():
    cfg = _cfg("femnist")
    ds = load_dataset(cfg.data, cfg.seed)
    assert ds.x_train.shape[1:] == (28, 28, 1) and ds.x_train.dtype == np.float32
    assert ds.x_train.min() >= 0 and ds.x_train.max() <= 1
    assert ds.num_classes == 62 and len(ds.x_train) + len(ds.x_test) == 24
    parts = partition_indices(ds, cfg.data, cfg.seed)
    writers = [set(ds.groups["writer_id"][p]) for p in parts]
    assert [len(w) for w in writers] == [1, 1, 1]  # one natural client per writer
    assert sum(len(p) for p in parts) == len(ds.x_train)


def test_shakespeare_characters_through_the_vocabulary():
    cfg = _cfg("shakespeare")
    ds = load_dataset(cfg.data, cfg.seed)
    vocab = cfg.data.vocabulary
    assert ds.x_train.shape[1:] == (80,) and ds.num_classes == len(vocab) == 80
    import datasets

    raw = datasets.load_dataset(
        "parquet", data_files=str(HF / "shakespeare.parquet"), split="train"
    )
    decoded = {"".join(vocab[int(i)] for i in row) for row in ds.x_train}
    assert decoded <= set(raw["x"])  # every input decodes back to a real 80-char window
    nxt = {vocab[int(i)] for i in ds.y_train}
    assert nxt <= set(raw["y"])
    parts = partition_indices(ds, cfg.data, cfg.seed)
    assert len(parts) == 3 and all(len(set(ds.groups["character_id"][p])) == 1 for p in parts)


def test_raw_text_is_cut_into_next_character_windows(tmp_path):
    import pandas as pd

    path = tmp_path / "plays.parquet"
    pd.DataFrame({"text": ["abcdefgh", "hgfedcba"], "role": ["a", "b"]}).to_parquet(path)
    cfg = config.load(
        {
            "data": {
                "dataset": "huggingface",
                "name": "parquet",
                "path": str(path),
                "sequence_length": 3,
                "num_clients": 2,
                "test_fraction": 0.0,
                "partition": "column",
                "column": "role",
            }
        }
    )
    ds = load_dataset(cfg.data, 0)
    assert len(ds.x_train) == 10 and ds.num_classes == 8  # 5 windows of 3 per text
    vocab = "abcdefgh"
    pairs = {
        ("".join(vocab[int(i)] for i in x), vocab[int(y)])
        for x, y in zip(ds.x_train, ds.y_train, strict=True)
    }
    assert ("abc", "d") in pairs and ("cba", None) not in pairs and ("fed", "c") in pairs
    assert sorted(np.unique(ds.groups["role"], return_counts=True)[1]) == [5, 5]


def test_bad_huggingface_configs_are_one_line():
    with pytest.raises(ConfigError, match="data.name is required"):
        config.load({"data": {"dataset": "huggingface"}})
    cases = [
        (["data.feature=pixels"], "data.feature='pixels' is not a column"),
        (["data.label=digit"], "no label column 'digit'"),
        (["data.column=author"], "data.column='author' is not a column"),
        (["data.path=/nonexistent/femnist.parquet"], "cannot load it"),
    ]
    for extra, message in cases:
        cfg = _cfg("femnist", *extra)
        with pytest.raises(DataError, match=message) as err:
            load_dataset(cfg.data, 0)
        assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="not in data.vocabulary"):
        load_dataset(_cfg("shakespeare", "data.vocabulary=abc").data, 0)


@pytest.mark.keras
@pytest.mark.parametrize("name", ["femnist", "shakespeare"])
def test_the_shipped_configs_run_offline(name, tmp_path):
    hist = api.run(
        ROOT / "experiments" / f"{name}.yaml",
        out=tmp_path,
        overrides=[
            "data.name=parquet",
            f"data.path={HF / name}.parquet",
            "data.num_clients=3",
            "strategy.clients_per_round=3",
            "rounds=2",
            "runtime.executor=local",
            "runtime.progress=false",
        ],
    )
    assert hist.final["clients/ok"] == 3 and np.isfinite(hist.final["eval/loss"])
    expected = {"femnist": 428_350, "shakespeare": 817_872}[name]  # CNN; LEAF's LSTM
    assert hist.summary["params"]["count"] == expected
