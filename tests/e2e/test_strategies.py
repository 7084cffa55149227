"""Every strategy name builds from the config and runs end to end for 3 rounds from the CLI."""

import json

import pytest

from fedray import config
from fedray.aggregators import Krum, Mean, Median, NormBound, TrimmedMean
from fedray.cli import main
from fedray.config import build
from fedray.errors import ConfigError
from fedray.features import FedProx
from fedray.strategy import STRATEGIES
from fedray.strategy.server_opt import ServerAdaptive, ServerMomentum, ServerSGD
from tests.conftest import ROOT

pytest.importorskip("tensorflow")


@pytest.mark.parametrize(
    "overrides,aggregator,optimizer",
    [
        ([], Mean(), ServerSGD(1.0)),
        (["strategy.server_learning_rate=0.5"], Mean(), ServerSGD(0.5)),
        (["strategy.name=fedavgm"], Mean(), ServerMomentum(1.0, 0.9)),
        (
            ["strategy.name=fedadam", "strategy.tau=0.01"],
            Mean(),
            ServerAdaptive("adam", 1e-2, 0.9, 0.99, 0.01),
        ),
        (
            ["strategy.name=fedyogi", "strategy.server_learning_rate=0.1"],
            Mean(),
            ServerAdaptive("yogi", 0.1, 0.9, 0.99, 1e-3),
        ),
        (["strategy.name=fedadagrad"], Mean(), ServerAdaptive("adagrad", 1e-2, 0.9, 0.99, 1e-3)),
        (["strategy.name=fedmedian"], Median(), ServerSGD()),
        (["strategy.name=trimmed_mean", "strategy.trim_beta=0.2"], TrimmedMean(0.2), ServerSGD()),
        (
            ["strategy.name=krum", "strategy.num_byzantine=1", "strategy.min_fit_clients=5"],
            Krum(1, 1),
            ServerSGD(),
        ),
        (["strategy.name=multi_krum", "strategy.min_fit_clients=3"], Krum(0, None), ServerSGD()),
        (["strategy.norm_bound=2.0"], NormBound(Mean(), 2.0), ServerSGD()),
    ],
)
def test_config_builds_the_composed_strategy(overrides, aggregator, optimizer):
    cfg = config.load({"data": {"num_clients": 6}}, overrides)
    s = build.build_strategy(cfg)
    assert s.aggregator == aggregator and s.server_optimizer == optimizer


def test_fedprox_carries_mu_to_the_clients():
    s = build.build_strategy(config.load({}, ["strategy.name=fedprox", "strategy.proximal_mu=0.5"]))
    assert s.features == (FedProx(0.5),) and s.aggregator == Mean()
    assert build.build_strategy(config.load({})).features == ()


def test_krum_needs_enough_clients_per_round():
    with pytest.raises(ConfigError, match="needs strategy.min_fit_clients >= 2f \\+ 3 = 5, got 1"):
        config.load({"data": {"num_clients": 6}, "strategy": {"name": "krum", "num_byzantine": 1}})


@pytest.mark.keras
@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_runs_three_rounds_from_the_cli(name, tmp_path, capsys):
    out = tmp_path / name
    extra = ["--set", "strategy.min_fit_clients=3"] if "krum" in name else []
    code = main(
        [
            "run",
            str(ROOT / "experiments" / "linreg.yaml"),
            "--local",
            "--no-progress",
            "--out",
            str(out),
            "--set",
            f"strategy.name={name}",
            "--set",
            "rounds=3",
            "--set",
            "data.num_clients=5",
            "--set",
            "runtime.clients_per_actor=5",
            *extra,
        ]
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["strategy"]["name"] == name
    assert summary["final"]["round"] == 3 and summary["final"]["clients/ok"] == 5
    assert summary["final"]["round/committed"] == 1
