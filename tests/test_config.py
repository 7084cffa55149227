from pathlib import Path

import pytest

from fedray import config
from fedray.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_and_overrides(linreg_config):
    cfg = config.load(linreg_config, ["rounds=3", "data.num_clients=4", "model.hidden=[8, 4]"])
    assert cfg.rounds == 3 and cfg.data.num_clients == 4 and cfg.model.hidden == [8, 4]
    assert cfg.data.dataset == "linreg" and cfg.client.learning_rate == 0.01


RUN_CONFIGS = sorted(p for p in (ROOT / "experiments").glob("*.yaml") if "cluster" not in p.name)


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    config.load(path)


@pytest.mark.parametrize(
    "override,expected",
    [
        ("data.num_clients=0", "data.num_clients = 0: Input should be greater than or equal to 1"),
        ("data.num_client=3", "unknown key 'data.num_client' (did you mean 'data.num_clients'?)"),
        ("client.optimizer=lbfgs", "client.optimizer = 'lbfgs': Input should be 'sgd', 'adam'"),
        ("rounds=many", "rounds = 'many': Input should be a valid integer"),
        (
            "strategy.fraction_fit=1.5",
            "strategy.fraction_fit = 1.5: Input should be less than or equal to 1",
        ),
        ("strategy.min_fit_clients=5", "strategy.min_fit_clients=5 exceeds data.num_clients=2"),
        ("model.name=resnet", "unknown model 'resnet'"),
        ("data.dataset=csv", "data.path is required for dataset 'csv'"),
        ("data.partition=column", "data.column is required when data.partition is 'column'"),
        ("model.hidden=[0]", "hidden sizes must be >= 1, got [0]"),
    ],
)
def test_bad_values_are_reported_with_key_value_and_allowed(linreg_config, override, expected):
    with pytest.raises(ConfigError) as info:
        config.load(linreg_config, [override])
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_all_problems_reported_together(linreg_config):
    with pytest.raises(ConfigError) as info:
        config.load(linreg_config, ["rounds=0", "seed=-1", "client.batch_size=0"])
    msg = str(info.value)
    assert "rounds = 0" in msg and "seed = -1" in msg and "client.batch_size = 0" in msg


def test_file_problems(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: '.*nope.yaml'"):
        config.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rounds: [1, 2\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        config.load(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping of keys, got list"):
        config.load(lst)
    with pytest.raises(ConfigError, match="expects dotted.key=value, got 'rounds'"):
        config.load({}, ["rounds"])


def test_clients_per_actor_accepts_auto_or_a_positive_int():
    assert (
        config.load({"runtime": {"clients_per_actor": "auto"}}).runtime.clients_per_actor == "auto"
    )
    assert config.load({"runtime": {"clients_per_actor": 4}}).runtime.clients_per_actor == 4
    with pytest.raises(ConfigError) as info:
        config.load({"runtime": {"clients_per_actor": 0}})
    assert str(info.value) == (
        "invalid config: runtime.clients_per_actor = 0: "
        "Input should be greater than or equal to 1 or Input should be 'auto'"
    )
    with pytest.raises(ConfigError, match="runtime.clients_per_actor"):
        config.load({"runtime": {"clients_per_actor": "many"}})


def test_resolved_config_round_trips():
    cfg = config.load({"rounds": 2})
    assert config.load(cfg.to_dict()) == cfg


# --- Relative data paths: from the config file's folder, else the working directory ---


@pytest.fixture
def project_elsewhere(tmp_path, monkeypatch):
    """A config and its data in ``project/``, run from an unrelated working directory."""
    project, cwd = tmp_path / "project", tmp_path / "cwd"
    (project / "data").mkdir(parents=True)
    cwd.mkdir()
    (project / "data" / "train.csv").write_text("x,label\n1,0\n")
    (project / "exp.yaml").write_text(
        "data: {dataset: csv, path: data/train.csv, test_path: data/train.csv}\n"
    )
    monkeypatch.chdir(cwd)
    return project, cwd


def test_a_relative_data_path_is_found_beside_its_config_file(project_elsewhere):
    project, _ = project_elsewhere
    cfg = config.load(project / "exp.yaml")
    # absolute, so that a host in another working directory reads the same file
    assert cfg.data.path == str(project / "data" / "train.csv")
    assert cfg.data.test_path == str(project / "data" / "train.csv")


def test_a_relative_data_path_falls_back_to_the_working_directory(project_elsewhere):
    project, cwd = project_elsewhere
    (cwd / "mine.csv").write_text("x,label\n1,0\n")
    cfg = config.load(project / "exp.yaml", ["data.test_path=mine.csv"])
    assert cfg.data.test_path == str(cwd / "mine.csv")  # not beside the file: from the cwd
    cfg = config.load(project / "exp.yaml", ["data.test_path=data/train.csv"])
    assert cfg.data.test_path == str(project / "data" / "train.csv")  # --set: as in the file
    (project / "exp.yaml").write_text("data: {dataset: csv, path: mine.csv}\n")
    assert config.load(project / "exp.yaml").data.path == str(cwd / "mine.csv")
    assert config.load({"data": {"dataset": "csv", "path": "mine.csv"}}).data.path == str(
        cwd / "mine.csv"
    )


def test_a_data_path_found_nowhere_is_kept_as_written(project_elsewhere):
    project, _ = project_elsewhere
    (project / "exp.yaml").write_text("data: {dataset: csv, path: nowhere.csv}\n")
    assert config.load(project / "exp.yaml").data.path == "nowhere.csv"


def test_a_sweep_keeps_the_resolved_path_for_every_trial(project_elsewhere):
    from fedray.sweeps import plan

    project, _ = project_elsewhere
    p = plan(project / "exp.yaml", {"rounds": [1, 2]})
    assert p.config["data"]["path"] == str(project / "data" / "train.csv")
    trial = config.load(p.config, p.trials[0].overrides)
    assert trial.data.path == str(project / "data" / "train.csv")
