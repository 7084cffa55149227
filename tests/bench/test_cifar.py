"""``fedray bench cifar``'s pieces: the protocol's model, the stand-in data, the source."""

import numpy as np
import pytest

from fedray import config
from fedray.bench.cifar import CONFIG, cifar_shaped, data_source
from tests.conftest import ROOT


def test_the_stand_in_has_cifar_shapes_and_learnable_classes(tmp_path):
    path = tmp_path / "c.npz"
    cifar_shaped(path, sizes=(200, 50))
    d = np.load(path)
    assert d["x_train"].shape == (200, 32, 32, 3) and d["x_train"].dtype == np.uint8
    assert d["y_train"].shape == (200, 1) and set(np.unique(d["y_train"])) <= set(range(10))
    # Learnable, not trivial: a nearest-class-mean rule on held-out images beats chance
    # (10 %) by far, from 150 noisy training images.
    x, y = d["x_train"].reshape(200, -1).astype(float), d["y_train"].ravel()
    means = np.stack([x[:150][y[:150] == k].mean(0) for k in range(10)])
    guess = np.argmin(((x[150:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    assert (guess == y[150:]).mean() > 0.5


def test_the_data_source_prefers_a_given_file_then_keras_cache(tmp_path, monkeypatch):
    assert data_source("/data/c.npz") == (["data.path=/data/c.npz"], "CIFAR-10 from /data/c.npz")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    (tmp_path / "keras" / "datasets" / "cifar-10-batches-py").mkdir(parents=True)
    assert data_source(None) == ([], "real CIFAR-10 (keras.datasets cache)")


def test_the_protocol_config_is_pfls():
    cfg = config.load(ROOT / CONFIG)
    assert (cfg.data.num_clients, cfg.strategy.fraction_fit * cfg.data.num_clients) == (1000, 50)
    assert (cfg.client.batch_size, cfg.client.local_epochs, cfg.client.learning_rate) == (
        10,
        1,
        0.1,
    )
    assert cfg.strategy.weighting == "uniform" and cfg.evaluation.every == 10


@pytest.mark.keras
def test_simple_cnn_has_the_papers_parameter_count():
    from fedray.client.models import build_model
    from fedray.data import DatasetInfo

    cfg = config.load(ROOT / CONFIG)
    model = build_model(cfg.model, cfg.client, DatasetInfo((32, 32, 3), 10, "classification", 10))
    assert model.count_params() == 1_626_442


def test_the_table_gives_each_repeat_and_the_median_of_the_ratios():
    import pandas as pd

    from fedray.bench.cifar import markdown, row

    runs = [(1.2, 1.0), (1.1, 1.0), (1.5, 1.0)]  # ratios 1.2, 1.1, 1.5: the median is 1.2
    fedray = {
        "rounds": 20,
        "mean_round_s": 1.4,
        "startup_s": 12.0,
        "peak_pss_mb": 5000.0,
        "cpu_s_per_round": 2.4,
        "quality": 0.85,
    }
    frame = pd.DataFrame(
        [row(i, "stand-in", 2, {**fedray, "round_s": f}, fl, 250) for i, (f, fl) in enumerate(runs)]
    )
    lines = markdown(frame).splitlines()
    assert lines[2].startswith("| 0 | 1.200 | 1.000 | 1.20 | 1.400 |")
    assert lines[5].startswith("| **median** | 1.200 | 1.000 | 1.20 |")
    assert lines[-1] == "stand-in; 20 rounds, 2 hosts."
