"""Sweeps on Ray Tune, end to end: a 2x2 grid, the CLI, and resuming a killed sweep."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedray.cli import main
from fedray.loop.checkpoint import FILENAME
from tests.conftest import ROOT

LINREG = str(ROOT / "experiments" / "linreg.yaml")
FEDRAY = [sys.executable, "-m", "fedray"]


@pytest.mark.ray
@pytest.mark.slow
def test_a_two_by_two_sweep_on_ray_hosts_writes_one_row_per_trial(tmp_path, capsys):
    out = tmp_path / "sweep"
    code = main(
        [
            "sweep",
            LINREG,
            "--grid",
            "client.learning_rate=[0.005,0.02]",
            "--grid",
            "strategy.name=[fedavg,fedadam]",
            "--set",
            "rounds=3",
            "--max-concurrent",
            "2",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    df = pd.read_csv(out / "sweep.csv")
    assert len(df) == 4 and (df["state"] == "TERMINATED").all() and (df["rounds"] == 3).all()
    assert sorted(zip(df["client.learning_rate"], df["strategy.name"])) == [
        (0.005, "fedadam"),
        (0.005, "fedavg"),
        (0.02, "fedadam"),
        (0.02, "fedavg"),
    ]
    assert (df["metric"] == "eval/loss").all() and df["final"].notna().all()
    assert "fedray sweep" in printed and "t003" in printed
    for _, t in df.iterrows():
        run = Path(t["out"])
        summary = json.loads((run / "summary.json").read_text())
        cfg = summary["config"]
        assert cfg["client"]["learning_rate"] == t["client.learning_rate"]
        assert cfg["strategy"]["name"] == t["strategy.name"]
        # The trial's hosts ran in its own placement group: one host of 2 clients, at
        # most its share of the 2 CPUs (2 trials at once).
        assert len(summary["hosts"]) == 1 and summary["hosts"][0]["clients"] == [0, 1]
        rows = pd.read_csv(run / "metrics.csv")
        assert rows["eval/loss"].iloc[-1] == pytest.approx(t["final"])
    # Each trial is an ordinary run: fedray report works on it, and on the sweep.
    assert main(["report", str(out)]) == 0
    assert "t000" in capsys.readouterr().out
    assert (out / "sweep.png").stat().st_size > 10_000
    # The learning rate made a difference: the trials are not copies of one run.
    assert df["final"].nunique() == 4


def _wait(predicate, timeout_s, proc):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"sweep exited early ({proc.returncode}): {proc.stderr.read()}")
        time.sleep(0.2)
    raise AssertionError("timed out")


def _checkpointed_round(run):
    path = run / "metrics.csv"
    if not (run / FILENAME).exists() or not path.exists():
        return 0
    try:
        return len(pd.read_csv(path))
    except (pd.errors.EmptyDataError, pd.errors.ParserError):
        return 0


@pytest.mark.ray
@pytest.mark.slow
def test_a_killed_sweep_resumes_keeping_finished_trials_and_continuing_the_others(tmp_path):

    out = tmp_path / "sweep"
    cmd = [
        *FEDRAY,
        "sweep",
        LINREG,
        "--grid",
        "client.learning_rate=[0.01,0.02]",
        "--set",
        "rounds=60",
        "--set",
        "runtime.executor=local",
        "--set",
        "evaluation.every=1",
        "--max-concurrent",
        "1",
        "--out",
        str(out),
        "--no-progress",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    runs = out / "runs"
    try:
        _wait(
            lambda: (
                (runs / "t000" / "summary.json").is_file()
                and _checkpointed_round(runs / "t001") >= 5
            ),
            240,
            first,
        )
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the whole sweep: driver, Ray, trials
        first.wait()
    done = (runs / "t000" / "summary.json").read_text()
    before = pd.read_csv(runs / "t001" / "metrics.csv")
    assert 5 <= len(before) < 60, "t001 was to be interrupted mid-run"
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (runs / "t000" / "summary.json").read_text() == done  # kept, not re-run
    after = pd.read_csv(runs / "t001" / "metrics.csv")
    assert len(after) == 60
    # The rounds before the kill kept their rows (timings too): it resumed, not restarted.
    kept = after.iloc[: len(before) - 1]  # the last row may postdate the last checkpoint
    pd.testing.assert_frame_equal(kept, before.iloc[: len(before) - 1])
    df = pd.read_csv(out / "sweep.csv")
    assert (df["state"] == "TERMINATED").all() and (df["rounds"] == 60).all()
    # And the resumed trial equals an uninterrupted run of its config, bit for bit.
    import fedray

    ref = fedray.run(
        LINREG,
        out=tmp_path / "ref",
        overrides=[
            "rounds=60",
            "runtime.executor=local",
            "evaluation.every=1",
            "runtime.progress=false",
            "client.learning_rate=0.02",
            "seed=0",
        ],
    )
    resumed = json.loads((runs / "t001" / "summary.json").read_text())["final"]
    assert resumed["eval/loss"] == ref.final["eval/loss"]
    np.testing.assert_array_equal(after["fit/loss"], ref.metrics["fit/loss"])


@pytest.mark.ray
@pytest.mark.slow
def test_a_failed_trial_is_an_error_row_with_its_reason_and_the_others_finish(
    tmp_path, capsys, caplog
):
    out = tmp_path / "sweep"
    code = main(
        [
            "sweep",
            LINREG,
            "--grid",
            "faults.crash_rate=[0.0,1.0]",
            "--set",
            "rounds=2",
            "--set",
            "runtime.executor=local",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 3  # not every trial finished
    # No traceback from Tune: the reason is one line in the table.
    printed = capsys.readouterr()
    assert "Traceback" not in printed.err + printed.out + caplog.text
    assert "ERROR" in printed.out
    df = pd.read_csv(out / "sweep.csv", keep_default_na=False)
    assert df["state"].tolist() == ["TERMINATED", "ERROR"]
    assert df["error"][0] == "" and "crashed" in df["error"][1]
    assert "failures.csv" in df["error"][1]  # where the details are
    assert main(["report", str(out)]) == 0  # the reason survives: it is in the run directory
    assert "crashed" in capsys.readouterr().out


@pytest.mark.ray
@pytest.mark.slow
def test_running_a_sweep_again_retries_the_trials_that_failed(tmp_path, capsys):
    rows = "x,label\n" + "".join(f"{i / 10},{3 * i / 10 + 1}\n" for i in range(40))
    here, later = tmp_path / "a.csv", tmp_path / "b.csv"
    here.write_text(rows)
    out = tmp_path / "sweep"
    args = [
        "sweep",
        LINREG,
        "--grid",
        f"data.path=[{here},{later}]",
        "--set",
        "data.dataset=csv",
        "--set",
        f"data.path={here}",
        "--set",
        "rounds=2",
        "--set",
        "runtime.executor=local",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(args) == 3
    df = pd.read_csv(out / "sweep.csv", keep_default_na=False)
    assert df["state"].tolist() == ["TERMINATED", "ERROR"] and "not found" in df["error"][1]
    later.write_text(rows)  # the cause is fixed: the same command runs the failed trial again
    assert main(args) == 0
    df = pd.read_csv(out / "sweep.csv", keep_default_na=False)
    assert df["state"].tolist() == ["TERMINATED", "TERMINATED"] and set(df["error"]) == {""}
