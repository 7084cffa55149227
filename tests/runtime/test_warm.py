"""Warm runs: `fedray up` / `fedray down`, and warm hosts that never leak one run into the next."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from fedray.errors import FedrayError
from fedray.runtime import warm
from fedray.runtime.head import MAX_TEMP_DIR
from tests.conftest import ROOT

LINREG = str(ROOT / "experiments" / "linreg.yaml")


def test_the_registry_holds_the_hosts_for_one_live_driver_at_a_time():
    reg = warm.WarmRegistry()
    me = warm.owner()
    assert reg.acquire(me) is None
    reg.put(0, "spec", "store")
    assert reg.current(0) == ("spec", "store", 0)
    other = (me[0], os.getppid())  # alive
    assert "busy with another run" in reg.acquire(other)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    reg.release(me)
    assert reg.acquire((me[0], dead.pid)) is None  # nobody held them
    assert reg.acquire(me) is None  # a dead driver's hold lapses
    assert reg.current(0) is None  # and its specs are gone


def test_joining_without_a_warm_instance_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv(warm.DIR_ENV, str(tmp_path / "none"))
    with pytest.raises(FedrayError, match="no warm instance is up; start one with `fedray up`"):
        warm.join()
    monkeypatch.setenv(warm.ENV, "fedray")
    assert warm.resolve_address(None) == "fedray" and warm.resolve_address("auto") == "auto"


def _fedray(*args, env, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "fedray", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _ray_pids(parent):
    import psutil

    kids = psutil.Process(parent).children(recursive=True)
    return [p.pid for p in kids if any(n in p.name() for n in ("gcs_server", "raylet"))]


@pytest.mark.ray
@pytest.mark.slow
def test_warm_runs_equal_cold_runs_bit_for_bit_and_down_stops_only_its_instance(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(warm.DIR_ENV, None)
    # Its own state dir and Ray temp dir (short: Ray's socket paths live in it).
    where = ["--state-dir", str(tmp_path / "up")]
    temp = Path(tempfile.mkdtemp(prefix="fw", dir="/tmp")) / "ray"
    # A bystander: another Ray instance on this machine, which `fedray down` must not touch.
    bystander = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import ray, time; ray.init(address='local', num_cpus=1, "
            "include_dashboard=False);"
            " print('up', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert bystander.stdout.readline().strip() == "up"
    theirs = _ray_pids(bystander.pid)
    assert len(theirs) >= 2
    try:
        res = _fedray("up", "--num-cpus", "2", *where, "--temp-dir", str(temp), env=env)
        assert res.returncode == 0, res.stderr[-3000:]
        assert "2 hosts with TensorFlow loaded" in res.stdout
        state = json.loads((tmp_path / "up" / "up.json").read_text())
        assert state["temp_dir"] == str(temp)
        again = _fedray("up", *where, env=env)
        assert again.returncode == 2 and "a warm instance is up already" in again.stderr
        # Run A, then B, on the warm hosts; then B cold. B must not remember A.
        a = ["--set", "client.learning_rate=0.02", "--set", "rounds=4"]
        b = [
            "--set",
            "data.dataset=blobs",
            "--set",
            "data.num_samples=400",
            "--set",
            "client.loss=sparse_categorical_crossentropy",
            "--set",
            "client.metrics=[accuracy]",
            "--set",
            "model.name=mlp",
            "--set",
            "model.hidden=[8]",
            "--set",
            "rounds=3",
            "--set",
            "evaluation.predict=null",
        ]
        for name, sets in (("a", a), ("b", b)):
            res = _fedray(
                "run",
                LINREG,
                "--address",
                "fedray",
                *where,
                "--no-progress",
                "--out",
                str(tmp_path / name),
                *sets,
                env=env,
            )
            assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
        cold = _fedray(
            "run",
            LINREG,
            "--no-progress",
            "--out",
            str(tmp_path / "cold"),
            *b,
            env={k: v for k, v in env.items() if k != warm.ENV},
        )
        assert cold.returncode == 0, cold.stderr[-3000:]
        import keras

        wm = keras.saving.load_model(tmp_path / "b" / "model.keras")
        cm = keras.saving.load_model(tmp_path / "cold" / "model.keras")
        for w, c in zip(wm.get_weights(), cm.get_weights()):
            np.testing.assert_array_equal(w, c)
        import pandas as pd

        wrows = pd.read_csv(tmp_path / "b" / "metrics.csv")
        crows = pd.read_csv(tmp_path / "cold" / "metrics.csv")
        for col in ("fit/loss", "eval/loss", "eval/accuracy"):
            np.testing.assert_array_equal(wrows[col], crows[col])
        # A warm host that dies is restarted by Ray and reloads the run's spec: no round
        # loses a client, and the weights equal the fault-free run's (as on cold hosts).
        for name, extra in (("crash", ["--set", "faults.host_crash_rate=0.3"]), ("calm", [])):
            res = _fedray(
                "run",
                LINREG,
                "--address",
                "fedray",
                *where,
                "--no-progress",
                "--out",
                str(tmp_path / name),
                "--set",
                "rounds=4",
                *extra,
                env=env,
            )
            assert res.returncode == 0, res.stderr[-3000:]
        crash = pd.read_csv(tmp_path / "crash" / "metrics.csv")
        calm = pd.read_csv(tmp_path / "calm" / "metrics.csv")
        assert crash["hosts/restarted"].sum() >= 1 and (crash["clients/ok"] == 2).all()
        np.testing.assert_array_equal(crash["eval/loss"], calm["eval/loss"])
        ws = json.loads((tmp_path / "b" / "summary.json").read_text())
        cs = json.loads((tmp_path / "cold" / "summary.json").read_text())
        assert ws["config"]["runtime"]["address"] == "fedray"
        assert ws["time"]["startup_s"] < cs["time"]["startup_s"]
    finally:
        down = _fedray("down", *where, env=env)
        bystander.kill()
        bystander.wait()
        removed = not temp.exists()  # `fedray down` deletes the instance's temp dir
        shutil.rmtree(temp.parent, ignore_errors=True)
    assert down.returncode == 0 and "stopped the warm instance" in down.stdout
    time.sleep(1)
    import psutil

    left = [
        p
        for p in psutil.process_iter(["cmdline"])
        if state["temp_dir"] in " ".join(p.info["cmdline"] or [])
    ]
    assert left == []
    assert all(psutil.pid_exists(pid) for pid in theirs), "fedray down killed another instance"
    assert not (tmp_path / "up" / "up.json").exists() and removed
    assert "no warm instance" in _fedray("down", *where, env=env).stdout


AGENT_PORT_CHECK = """
import socket, sys
held = socket.socket()
try:
    held.bind(("", 52365)); held.listen()  # as another Ray instance's agent would
except OSError:
    pass  # someone holds it already: the same situation
import ray
from fedray.runtime.connect import connect
connect(None, num_cpus=1, verbose=False)
node = ray._private.worker.global_worker.node
port = node.dashboard_agent_listen_port
log = open(node.get_logs_dir_path() + "/dashboard_agent.log").read()
print(port, "Failed to bind" in log)
ray.shutdown()
"""


@pytest.mark.ray
@pytest.mark.slow
def test_a_private_instance_never_waits_for_another_instances_agent_port():
    # Ray's agent listens on 52365 by default; with it taken (a warm instance, a second
    # run) the agent retried for 3.3 s while ray.init waited.
    out = subprocess.run(
        [sys.executable, "-c", AGENT_PORT_CHECK],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    port, failed = out.stdout.split()[-2:]
    assert int(port) != 52365 and failed == "False"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["up", "--hosts", "0"], "--hosts 0: expected an integer >= 1"),
        (["up", "--num-cpus", "-1"], "--num-cpus -1: expected an integer >= 1"),
        (["run", LINREG, "--address", "fedray"], "no warm instance is up; start one with"),
    ],
)
def test_warm_mistakes_are_one_line_and_exit_2(args, message, tmp_path, monkeypatch, capsys):
    from fedray.cli import main

    monkeypatch.setenv(warm.DIR_ENV, str(tmp_path / "none"))
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_down_without_an_instance_says_so(tmp_path, monkeypatch, capsys):
    from fedray.cli import main

    monkeypatch.setenv(warm.DIR_ENV, str(tmp_path / "none"))
    assert main(["down"]) == 0
    assert "no warm instance" in capsys.readouterr().out


def test_warm_hosts_with_a_gpu_share_are_refused_in_one_place(monkeypatch):
    from fedray import config
    from fedray.config import build
    from fedray.errors import ConfigError

    both = "runtime.address='fedray' does not work with runtime.gpus_per_host=0.5"
    with pytest.raises(ConfigError, match=both):
        config.load(LINREG, ["runtime.address=fedray", "runtime.gpus_per_host=0.5"])
    # The same rule when FEDRAY_ADDRESS names the warm instance: before anything starts.
    monkeypatch.setenv(warm.ENV, "fedray")
    cfg = config.load(LINREG, ["runtime.gpus_per_host=0.5"])
    with pytest.raises(ConfigError, match=both):
        build.make_executor(cfg, build.build_strategy(cfg))


@pytest.mark.parametrize("command", ["up", "down", "run"])
def test_the_state_and_temp_dir_options_are_in_the_help(command, capsys):
    from fedray.cli import main

    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())  # argparse wraps to the terminal
    assert "--state-dir DIR" in shown and warm.DIR_ENV in shown and "~/.cache/fedray/up" in shown
    if command == "up":
        assert "--temp-dir DIR" in shown and "/tmp" in shown


def _someone_elses_instance(path):
    """A state directory naming an instance (dead: nothing is started) that must stay put."""
    path.mkdir()
    up = warm.UpState("127.0.0.1:1", str(path / "ray"), 65535, 1.0, 1, 1)  # no such processes
    (path / "up.json").write_text(json.dumps(up.__dict__))
    (path / "token").write_text("0" * 64)
    return path / "up.json"


def test_state_dir_chooses_the_instance_for_up_down_and_run(tmp_path, monkeypatch, capsys):
    from fedray.cli import main

    theirs = _someone_elses_instance(tmp_path / "theirs")
    monkeypatch.setenv(warm.DIR_ENV, str(theirs.parent))
    mine = tmp_path / "mine"
    assert main(["down", "--state-dir", str(mine)]) == 0
    assert "no warm instance" in capsys.readouterr().out
    args = ["run", LINREG, "--address", "fedray", "--state-dir", str(mine), "--out", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no warm instance is up; start one with" in err, err
    assert theirs.is_file() and not mine.exists()  # neither was touched


@pytest.mark.parametrize("bad", ["no parent", "a file", "not empty", "too long"])
def test_up_refuses_a_temp_dir_it_cannot_use_before_anything_starts(bad, tmp_path, capsys):
    from fedray.cli import main

    temp = {
        "no parent": tmp_path / "nope" / "ray",
        "a file": tmp_path / "f",
        "not empty": tmp_path / "d",
        "too long": tmp_path / ("r" * MAX_TEMP_DIR),
    }[bad]
    if bad == "a file":
        temp.write_text("")
    if bad == "not empty":
        temp.mkdir()
        (temp / "mine.txt").write_text("keep me")
    state = tmp_path / "state"
    assert main(["up", "--state-dir", str(state), "--temp-dir", str(temp)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"fedray: error: --temp-dir {temp}: ")
    said = {
        "no parent": "is not a writable directory",
        "a file": "not a directory",
        "not empty": "not empty",
        "too long": "too long for Ray's socket paths",
    }
    assert said[bad] in err and f"a path of at most {MAX_TEMP_DIR} bytes" in err, err
    assert not state.exists()  # nothing written
    assert bad != "not empty" or (temp / "mine.txt").read_text() == "keep me"


def test_down_deletes_only_what_up_wrote_into_the_state_dir(tmp_path, capsys):
    from fedray.cli import main

    state = _someone_elses_instance(tmp_path / "project").parent  # a folder of the user's
    (state / "notes.txt").write_text("mine")
    assert main(["down", "--state-dir", str(state)]) == 0
    assert "stopped the warm instance" in capsys.readouterr().out
    assert sorted(p.name for p in state.iterdir()) == ["notes.txt"]


def _process(*args):
    """A sleeping process whose command line carries ``args``, as a Ray process's does."""
    code = "import time; time.sleep(120)"
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)])


def test_kill_instance_kills_exactly_the_head_of_its_temp_dir(tmp_path):
    temp, gcs = tmp_path / "head", "203.0.113.7:46390"  # a documentation address: no real head
    (temp / "session_1").mkdir(parents=True)
    ours = [
        _process(f"--log_dir={temp}/session_1/logs", f"--gcs-address={gcs}"),  # gcs, monitor...
        _process(f"--temp-dir={temp}"),  # the dashboard
        _process("-m", "ray.util.client.server", f"--address={gcs}", "--port=46391"),  # no dir
    ]
    theirs = [
        _process(f"--log_dir={temp}2/session_1/logs"),  # a neighbour: the same prefix
        _process("-m", "ray.util.client.server", f"--address={gcs}1", "--port=46391"),
        _process("--port=463912"),
    ]
    time.sleep(0.5)
    try:
        assert warm.kill_instance(str(temp)) == 3
        assert [p.poll() is not None for p in ours + theirs] == [True] * 3 + [False] * 3
        assert not temp.exists()
    finally:
        for p in ours + theirs:
            p.kill()
            p.wait()


def test_down_of_a_folder_that_is_no_ray_temp_dir_is_one_line(tmp_path, capsys):
    from fedray.cli import main

    (tmp_path / "notes.txt").write_text("mine")
    assert main(["down", "--temp-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"fedray: error: --temp-dir {tmp_path}: no Ray head's temp dir (no session_* in it); "
        "expected the --temp-dir of a head started with `ray start --head --temp-dir DIR` "
        "or `fedray up`"
    )
    assert (tmp_path / "notes.txt").is_file()
