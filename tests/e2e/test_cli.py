"""The `fedray` command as a user runs it."""

import csv
import json
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def _fedray(*args, timeout=300, env=None, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "fedray.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env=env,
    )


@pytest.mark.parametrize(
    "args,expected",
    [
        (
            ["--set", "data.num_clients=0"],
            "data.num_clients = 0: Input should be greater than or equal to 1",
        ),
        (
            ["--set", "strategy.nme=fedavg"],
            "unknown key 'strategy.nme' (did you mean 'strategy.name'?)",
        ),
        (
            ["--set", "client.learning_rate=fast"],
            "client.learning_rate = 'fast': Input should be a valid number",
        ),
    ],
)
@pytest.mark.slow
def test_bad_config_is_one_clear_line_and_nonzero_exit(args, expected, tmp_path):
    res = _fedray("run", "experiments/linreg.yaml", "--out", str(tmp_path / "o"), *args, timeout=60)
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("fedray: error: invalid config:") and expected in lines[0]
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "o").exists()  # nothing was started or written


@pytest.mark.slow
def test_missing_config_file():
    res = _fedray("run", "experiments/nope.yaml", timeout=60)
    assert res.returncode == 2
    assert "config file not found: 'experiments/nope.yaml'" in res.stderr


@pytest.mark.slow
def test_a_round_without_survivors_stops_with_exit_3_and_a_clear_message(tmp_path):
    out = tmp_path / "run"
    common = ["--out", str(out), "--local", "--no-progress", "--set", "rounds=3"]
    # Every client of every attempt crashes (in-process, a crash is a failed client).
    res = _fedray(
        "run",
        "experiments/linreg.yaml",
        *common,
        "--set",
        "faults.crash_rate=1.0",
        "--set",
        "checkpoint.every=1",
        timeout=120,
    )
    assert res.returncode == 3, res.stderr
    msg = res.stderr.strip().splitlines()[-1]
    assert msg.startswith("fedray: error: round 1: 0/6 ok in 3 attempts; failed: 6 crashed;")
    # Round 1 committed nothing, so there is no checkpoint: --resume could not help.
    assert f"Details: {out / 'failures.csv'}; no round was committed: fix the cause" in msg
    assert len(msg) < 300 + len(str(out)) * 2  # short, whatever the run directory's name
    assert "Traceback" not in res.stderr
    with (out / "failures.csv").open() as f:  # each crashed client of each attempt
        rows = list(csv.DictReader(f))
    assert [(r["attempt"], r["client"], r["cause"]) for r in rows] == [
        (str(a), str(c), "crash") for a in range(3) for c in range(2)
    ]


@pytest.mark.slow
@pytest.mark.ray
def test_fedray_run_linreg_end_to_end(tmp_path):
    out = tmp_path / "run"
    res = _fedray("run", "experiments/linreg.yaml", "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    preds = dict(re.findall(r"prediction at x=\[(\d+)\]: ([-\d.]+)", res.stdout))
    assert abs(float(preds["0"]) - 1) < 1.5 and abs(float(preds["10"]) - 31) < 1.5
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["rounds"] == 10 and summary["config"]["data"]["num_clients"] == 2
    assert set(summary["time"]) >= {"startup_s", "total_s", "round_s_median"}
    assert summary["final"]["clients/ok"] == 2
    import pandas as pd

    df = pd.read_csv(out / "metrics.csv")
    assert len(df) == 10
    assert {
        "round",
        "time/round_s",
        "clients/ok",
        "clients/failed",
        "fit/loss",
        "eval/loss",
        "eval/mae",
    } <= set(df.columns)
    # TensorFlow's and Ray's start-up noise is silenced by default.
    assert "oneDNN" not in res.stderr and "cuda" not in res.stderr.lower()


@pytest.mark.slow
def test_missing_data_file_fails_before_anything_starts(tmp_path):
    res = _fedray(
        "run",
        "experiments/hospitals.yaml",
        "--out",
        str(tmp_path / "o"),
        "--set",
        "data.path=nowhere/h.csv",
        timeout=60,
    )
    assert res.returncode == 2
    assert "fedray: error: data.path = 'nowhere/h.csv': file not found" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_unreachable_address_fails_fast_with_a_clear_message(elsewhere):
    # The subprocess timeout is the hang guard; the probe itself gives up after 3 s.
    res = _fedray(
        "run", "experiments/linreg.yaml", "--address", "127.0.0.1:1", timeout=60, cwd=elsewhere
    )
    assert res.returncode == 2
    assert "runtime.address = '127.0.0.1:1': no Ray head answers there" in res.stderr
    assert "Traceback" not in res.stderr
    assert sorted(p.name for p in elsewhere.iterdir()) == ["experiments"]  # no runs/


@pytest.mark.slow
def test_privacy_command_answers_both_questions_without_training():
    res = _fedray("privacy", "-z", "1.0", "-q", "0.01", "-T", "1000", "-d", "1e-5", timeout=120)
    assert res.returncode == 0, res.stderr
    assert "ε (RDP) = 2.101" in res.stdout and "ε (PLD) = 1.828" in res.stdout
    res = _fedray("privacy", "-e", "3", "-q", "0.01", "-T", "1000", "-d", "1e-5", timeout=120)
    assert res.returncode == 0, res.stderr
    z = float(re.search(r"noise_multiplier z = ([0-9.]+)", res.stdout).group(1))
    assert z == pytest.approx(0.865, abs=2e-3)
    res = _fedray("privacy", "-z", "-1", "-q", "2", "-T", "10", "-d", "1e-5", timeout=60)
    assert res.returncode == 2
    assert "--sampling-rate = 2.0: expected 0 < q <= 1" in res.stderr
    assert "--noise-multiplier = -1.0: expected z >= 0" in res.stderr


@pytest.mark.slow
def test_audit_of_a_missing_run_is_one_clear_line(tmp_path):
    res = _fedray("audit", str(tmp_path / "nope"), timeout=60)
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines == [
        f"fedray: error: '{tmp_path / 'nope'}' is not a finished fedray run (needs summary.json)"
    ]


_TF_NOISE = re.compile(r"absl::InitializeLog|oneDNN|cpu_feature_guard|^[IW]\d{4} ", re.MULTILINE)


@pytest.mark.slow
def test_tensorflow_start_up_lines_stay_hidden_in_every_process_that_loads_it(tmp_path):
    # A newcomer's shell: no TF_CPP_MIN_LOG_LEVEL (tests/conftest.py sets one for pytest).
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP")}
    out = tmp_path / "run"
    # `fedray run --local`: the clients' TensorFlow loads in this process.
    args = ["experiments/linreg.yaml", "--local", "--no-progress", "--set", "rounds=2"]
    res = _fedray("run", *args, "--out", str(out), env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert not _TF_NOISE.search(res.stderr), res.stderr
    # `fedray predict`: Keras loads to read model.keras.
    (tmp_path / "x.csv").write_text("x\n0\n10\n")
    res = _fedray("predict", str(out), "--input", str(tmp_path / "x.csv"), env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert not _TF_NOISE.search(res.stderr), res.stderr
    # The Python API: a run's history loads its model (after a Ray run, the driver's first
    # TensorFlow import is this one).
    code = (
        "from pathlib import Path\nfrom fedray.api import RunHistory\n"
        f"h = RunHistory()\nh.out_dir = Path({str(out)!r})\nprint(h.model().count_params())\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert res.returncode == 0 and res.stdout.strip() == "2", res.stderr[-3000:]
    assert not _TF_NOISE.search(res.stderr), res.stderr


@pytest.mark.slow
def test_piped_output_keeps_long_log_lines_whole_and_shows_one_plain_line_per_round(tmp_path):
    # As in a job, CI or `| tee`: stdout is a pipe. A log line longer than 80 columns
    # (this one names the run directory) arrives as one line, and progress is one plain
    # line per round instead of a bar drawn once, cut to 80 columns.
    out = tmp_path / "a-run-directory-whose-name-makes-the-log-line-longer-than-eighty-columns"
    args = ["experiments/linreg.yaml", "--local", "--set", "rounds=3", "--resume-if-exists"]
    res = _fedray("run", *args, "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.splitlines()
    assert any(line.endswith(f"INFO starting a new run in {out}") for line in lines), res.stdout
    rounds = [line for line in lines if re.match(r"round \d/3 ", line)]
    assert [r.split()[1] for r in rounds] == ["1/3", "2/3", "3/3"], res.stdout
    assert all("fit/loss=" in r and "eval/loss=" in r and "eval/mae=" in r for r in rounds)
    assert "━" not in res.stdout


def test_a_config_finds_its_data_from_any_working_directory_and_resumes(tmp_path, monkeypatch):
    import fedray.client.trainer as trainer_mod
    from fedray.cli import main
    from tests.fakes import NumpyTrainer

    monkeypatch.setattr(trainer_mod, "KerasTrainer", NumpyTrainer)  # real hosts, no TensorFlow
    config, out = str(ROOT / "experiments" / "hospitals.yaml"), tmp_path / "run"
    common = ["--local", "--no-progress"]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")  # data.path: data/hospitals.csv, beside the config
    assert main(["run", config, *common, "--set", "rounds=1", "--out", str(out)]) == 0
    monkeypatch.chdir(tmp_path / "b")  # the same resolved file: the checkpoint matches
    assert main(["run", config, *common, "--set", "rounds=2", "--resume", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["data"]["path"] == str(ROOT / "experiments/data/hospitals.csv")
    assert [r["round"] for r in csv.DictReader((out / "metrics.csv").open())] == ["1", "2"]


@pytest.mark.keras
def test_failures_csv_keeps_tensorflows_reason_and_round_1_offers_no_resume(elsewhere, capsys):
    from fedray.cli import main

    out = elsewhere / "run"
    argv = ["run", "experiments/linreg.yaml", "--local", "--no-progress", "--out", str(out)]
    settings = ["model.name=tests.custom_models:fails_in_training", "strategy.max_retries=0"]
    assert main([*argv, *(a for s in settings for a in ("--set", s))]) == 3  # the run stopped
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--resume" not in err and "no round was committed" in err, err
    with (out / "failures.csv").open() as f:
        errors = [r["error"] for r in csv.DictReader(f)]
    assert len(errors) == 2  # each client, with its own line: not "Graph execution error:"
    expected = "InvalidArgumentError: assertion failed: [my inputs must be negative] "
    assert all(e.startswith(expected) for e in errors), errors


def test_a_run_resumes_from_a_copy_of_its_checkout_elsewhere(tmp_path, monkeypatch):
    # The data path is absolute in the config; a moved or re-cloned checkout (a retried
    # job's new working directory) still resumes its run.
    import shutil

    import fedray.client.trainer as trainer_mod
    from fedray.cli import main
    from tests.fakes import NumpyTrainer

    monkeypatch.setattr(trainer_mod, "KerasTrainer", NumpyTrainer)
    for copy in ("first", "second"):
        (tmp_path / copy / "data").mkdir(parents=True)
        shutil.copy(ROOT / "experiments" / "hospitals.yaml", tmp_path / copy)
        shutil.copy(ROOT / "experiments" / "data" / "hospitals.csv", tmp_path / copy / "data")
    out, common = tmp_path / "run", ["--local", "--no-progress"]
    first, second = (str(tmp_path / c / "hospitals.yaml") for c in ("first", "second"))
    monkeypatch.chdir(tmp_path)
    assert main(["run", first, *common, "--set", "rounds=1", "--out", str(out)]) == 0
    assert main(["run", second, *common, "--set", "rounds=2", "--resume", str(out)]) == 0
    assert [r["round"] for r in csv.DictReader((out / "metrics.csv").open())] == ["1", "2"]
