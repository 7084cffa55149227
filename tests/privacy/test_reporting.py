"""What a DP run shows: one ε, named by its accountant and δ; and its clients' weighting."""

import logging

import pandas as pd
import pytest

from fedray import cli, config
from fedray.config import build

pytestmark = pytest.mark.slow


@pytest.fixture
def numpy_hosts(monkeypatch):
    import fedray.client.trainer as trainer_mod
    from tests.fakes import NumpyTrainer

    monkeypatch.setattr(trainer_mod, "KerasTrainer", NumpyTrainer)


def test_the_cli_prints_the_one_epsilon_every_round_showed(tmp_path, numpy_hosts, capsys):
    # The review saw 6.337 on the progress bar, none on the final line, 5.6 in the docs.
    out = tmp_path / "run"
    args = ["run", "experiments/linreg.yaml", "--local", "--no-progress", "--out", str(out)]
    sets = ["privacy.dp.noise_multiplier=1.0", "privacy.dp.delta=1e-5", "rounds=4"]
    sets += ["strategy.min_fit_clients=1", "data.num_clients=8"]
    code = cli.main([*args, *[a for s in sets for a in ("--set", s)]])
    assert code == 0
    printed = capsys.readouterr().out
    last = pd.read_csv(out / "metrics.csv")["privacy/epsilon"].iloc[-1]
    assert f"privacy: ε={last:.4g} at δ=1e-05 (RDP accountant, central DP)" in printed


def test_secure_aggregation_says_it_weights_clients_uniformly(caplog):
    cfg = config.load("experiments/linreg.yaml", ["privacy.secure_aggregation.enabled=true"])
    with caplog.at_level(logging.WARNING, logger="fedray.config.build"):
        strategy = build.build_strategy(cfg)
    assert "weighted uniformly, not by their example counts" in caplog.text
    assert "a secure sum carries no example counts" in caplog.text
    from fedray.api import weighting

    assert weighting(strategy) == "uniform"
    said = config.load(cfg.to_dict(), ["strategy.weighting=uniform"])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fedray.config.build"):
        build.build_strategy(said)
    assert "weighted uniformly" not in caplog.text  # asked for: nothing to say
