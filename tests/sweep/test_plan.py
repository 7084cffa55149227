"""Sweeps without Ray: the grid, the trials' configs, their reservations, the table."""

import json

import numpy as np
import pandas as pd
import pytest

from fedray import config
from fedray.errors import ConfigError, FedrayError
from fedray.sweeps import SweepPlan, parse_grid, pick_metric, plan, table, write
from tests.conftest import ROOT

LINREG = ROOT / "experiments" / "linreg.yaml"


def test_grid_items_parse_as_yaml_lists_and_bad_ones_name_the_item():
    grid = parse_grid(["client.learning_rate=[0.005,0.01,0.05]", "strategy.name=[fedavg,fedadam]"])
    assert grid == {
        "client.learning_rate": [0.005, 0.01, 0.05],
        "strategy.name": ["fedavg", "fedadam"],
    }
    for bad in ("client.learning_rate=0.01", "client.learning_rate", "=[1]", "x=[]", "x=[1"):
        with pytest.raises(ConfigError, match="expected KEY=\\[v1,v2,...\\]"):
            parse_grid([bad])
    with pytest.raises(ConfigError, match="given twice"):
        parse_grid(["rounds=[1]", "rounds=[2]"])
    with pytest.raises(ConfigError, match="use --seeds"):
        parse_grid(["seed=[1,2]"])


def test_every_combination_times_every_seed_is_a_validated_trial():
    grid = {"client.learning_rate": [0.005, 0.01], "strategy.name": ["fedavg", "fedadam"]}
    p = plan(LINREG, grid, seeds=3, overrides=["rounds=4"])
    assert len(p.trials) == 12 and p.seeds == [0, 1, 2]
    assert [t.name for t in p.trials[:3]] == ["t000", "t001", "t002"]
    first = p.trials[0]
    assert first.values == {"client.learning_rate": 0.005, "strategy.name": "fedavg", "seed": 0}
    assert first.overrides == ["client.learning_rate=0.005", "strategy.name=fedavg", "seed=0"]
    cfg = config.load(p.config, p.trials[-1].overrides)
    assert (cfg.client.learning_rate, cfg.strategy.name, cfg.seed, cfg.rounds) == (
        0.01,
        "fedadam",
        2,
        4,
    )


def test_a_bad_value_or_combination_is_refused_before_anything_starts():
    with pytest.raises(ConfigError, match="sweep trial client.learning_rate=-1.*learning_rate"):
        plan(LINREG, {"client.learning_rate": [0.01, -1]})
    with pytest.raises(ConfigError, match="sweep trial strategy.name=nope"):
        plan(LINREG, {"strategy.name": ["fedavg", "nope"]})
    with pytest.raises(ConfigError, match="--seeds 0"):
        plan(LINREG, {"rounds": [1]}, seeds=0)
    # Custom node resources cannot be met inside a trial's placement group: the trial
    # would wait for ever for its hosts, so the sweep is refused before it starts.
    with pytest.raises(ConfigError) as err:
        plan(LINREG, {"rounds": [1]}, overrides=["data.placement={0: site-a, 1: site-b}"])
    assert "sweep trial rounds=1, seed=0: data.placement=" in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="sweep trial rounds=1, seed=0: runtime.gpus_per_host"):
        plan(LINREG, {"rounds": [1]}, overrides=["runtime.gpus_per_host=auto"])


def test_a_trial_reserves_its_driver_and_each_host_within_its_share():
    from fedray.sweeps.tune import DRIVER_CPU, trial_bundles

    cfg = config.load(LINREG)  # 2 clients
    one = trial_bundles(cfg, 1.0)  # two trials on two CPUs: 1 host of 2 clients each
    assert one == [{"CPU": DRIVER_CPU}, {"CPU": 1.0 - DRIVER_CPU}]
    four = trial_bundles(config.load(LINREG, ["data.num_clients=4"]), 4.0)
    assert len(four) == 5  # one host per client while the CPUs allow
    for cpus, over in [
        (1.0, []),
        (4.0, ["data.num_clients=4"]),
        (0.5, ["runtime.clients_per_actor=1"]),
    ]:
        bundles = trial_bundles(config.load(LINREG, over), cpus)
        assert sum(b["CPU"] for b in bundles) <= cpus + 1e-9  # K trials never exceed K shares
    gpu = trial_bundles(config.load(LINREG, ["runtime.gpus_per_host=0.5"]), 2.0)
    assert all(b.get("GPU") == 0.5 for b in gpu[1:])


def _fake_run(out, name, losses, *, final=True, eps=None):
    run = out / "runs" / name
    run.mkdir(parents=True)
    df = pd.DataFrame({"round": range(1, len(losses) + 1), "eval/loss": losses, "fit/loss": losses})
    if eps is not None:
        df["privacy/epsilon"] = eps
    df.to_csv(run / "metrics.csv", index=False)
    if final:
        summary = {
            "final": {"round": len(losses)},
            "time": {"total_s": 3.5},
            "privacy": {"epsilon": eps} if eps is not None else None,
        }
        (run / "summary.json").write_text(json.dumps(summary))


def test_the_table_has_final_and_best_per_trial_and_the_plot_mean_and_std(tmp_path):
    p = plan(LINREG, {"client.learning_rate": [0.01, 0.02]}, seeds=2)
    p.save(tmp_path)
    _fake_run(tmp_path, "t000", [3.0, 1.0, 2.0])
    _fake_run(tmp_path, "t001", [4.0, 3.0, 2.5], eps=1.5)
    _fake_run(tmp_path, "t002", [2.0, 1.5], final=False)  # interrupted
    df = write(tmp_path, {"t000": "TERMINATED", "t001": "TERMINATED"})
    assert df["trial"].tolist() == ["t000", "t001", "t002", "t003"]
    assert df["state"].tolist() == ["TERMINATED", "TERMINATED", "PENDING", "PENDING"]
    r = df.set_index("trial")
    assert (r.loc["t000", "final"], r.loc["t000", "best"], r.loc["t000", "best_round"]) == (
        2.0,
        1.0,
        2,
    )
    assert r.loc["t001", "epsilon"] == 1.5 and np.isnan(r.loc["t000", "epsilon"])
    assert r.loc["t000", "metric"] == "eval/loss" and r.loc["t000", "time_s"] == 3.5
    assert r.loc["t003", "rounds"] == 0
    assert (tmp_path / "sweep.csv").is_file() and (tmp_path / "sweep.png").stat().st_size > 10_000
    from fedray.sweeps import curves

    stats, metric = curves(tmp_path)
    assert metric == "eval/loss"
    lr1 = stats[stats.combo == "client.learning_rate=0.01"].set_index("round")
    assert lr1.loc[1, "mean"] == 3.5 and lr1.loc[1, "std"] == pytest.approx(np.std([3, 4], ddof=1))
    assert lr1.loc[3, "count"] == 2
    assert table(tmp_path)["state"].tolist()[:2] == ["TERMINATED", "TERMINATED"]


def test_a_sweep_directory_is_named_when_it_is_not_one(tmp_path):
    with pytest.raises(FedrayError, match="not a fedray sweep directory"):
        SweepPlan.load(tmp_path)


def test_the_default_metric_and_mode():
    assert pick_metric(["eval/accuracy", "eval/loss"], None, None) == ("eval/accuracy", "max")
    assert pick_metric(["fit/loss"], None, None) == ("fit/loss", "min")
    assert pick_metric(["eval/mae"], "eval/mae", None) == ("eval/mae", "min")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "needs at least one --grid"),
        (
            ["--grid", "client.learning_rate=0.1"],
            "--grid 'client.learning_rate=0.1': expected KEY=",
        ),
        (["--grid", "client.nope=[1,2]"], "sweep trial client.nope=1, seed=0: .*client.nope"),
        (["--grid", "rounds=[1]", "--seeds", "0"], "--seeds 0: expected an integer >= 1"),
        (["--grid", "rounds=[1]", "--max-concurrent", "0"], "--max-concurrent 0: expected"),
        (["--grid", "rounds=[1]", "--address", "fedray"], "--address fedray: the warm hosts"),
    ],
)
def test_sweep_cli_mistakes_are_one_line_and_exit_2(args, message, capsys):
    from fedray.cli import main

    assert main(["sweep", str(LINREG), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("fedray: error: ")
    import re

    assert re.search(message, err), err


def test_a_different_sweep_in_the_same_directory_is_refused(tmp_path, capsys):
    from fedray.cli import main

    plan(LINREG, {"rounds": [1, 2]}).save(tmp_path)
    assert main(["sweep", str(LINREG), "--grid", "rounds=[1,3]", "--out", str(tmp_path)]) == 2
    assert "holds a different sweep" in capsys.readouterr().err


def test_fedray_sweep_stays_the_function_after_the_module_is_imported():
    import fedray
    import fedray.sweeps

    assert callable(fedray.sweep) and fedray.sweep.__module__ == "fedray"
    assert fedray.sweeps.sweep.__doc__.startswith("Run every combination")
