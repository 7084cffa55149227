"""Checkpoint and resume: a resumed run equals the uninterrupted one, bit for bit."""

import copy
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from fedray.callbacks import Callback, History
from fedray.loop import Checkpointer, checkpoint, run_rounds
from fedray.loop.checkpoint import CheckpointError, DriverState
from fedray.strategy import fedadam
from tests.conftest import ROOT
from tests.fakes import QuadraticExecutor


def _ex():
    return QuadraticExecutor([[float(i), -float(i)] for i in range(8)], list(range(1, 9)))


def _strategy():
    return fedadam(server_learning_rate=0.3, fraction_fit=0.5)  # uses the RNG and opt state


def test_resumed_driver_equals_uninterrupted_run():
    states, whole = [], History()
    full = run_rounds(
        strategy=_strategy(),
        executor=_ex(),
        rounds=6,
        seed=3,
        callback=Callback(),
        history=whole,
        checkpoint=Checkpointer(lambda st: states.append(copy.deepcopy(st)), every=1),
    )
    assert [s.server_round for s in states] == [1, 2, 3, 4, 5, 6]
    rec = History()
    ex = _ex()
    resumed = run_rounds(
        strategy=_strategy(),
        executor=ex,
        rounds=6,
        seed=3,
        callback=Callback(),
        history=rec,
        resume=states[2],
    )
    np.testing.assert_array_equal(full[0], resumed[0])
    assert [r for _, r in ex.fit_calls] == [4, 5, 6]  # only the missing rounds ran
    # The resumed history starts with the checkpoint's rows: the same six rows as the
    # uninterrupted run's, timings aside.
    assert [r["round"] for r in rec.rows] == [1, 2, 3, 4, 5, 6]

    def untimed(rows):
        return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]

    assert untimed(rec.rows) == untimed(whole.rows)


def test_checkpoint_file_round_trip_and_errors(tmp_path):
    state = DriverState(3, [np.arange(3.0)], {"m": [np.ones(2)]}, {}, {"state": 1}, [{"r": 1}])
    checkpoint.save(tmp_path, state, config_fingerprint="abc")
    back = checkpoint.load(tmp_path, config_fingerprint="abc")
    assert back.server_round == 3 and back.rows == [{"r": 1}]
    np.testing.assert_array_equal(back.params[0], [0.0, 1.0, 2.0])
    assert not (tmp_path / "checkpoint.npz.tmp").exists()  # written atomically
    with pytest.raises(CheckpointError, match="written for a different configuration"):
        checkpoint.load(tmp_path, config_fingerprint="xyz")
    (tmp_path / "checkpoint.npz").write_bytes(b"\x80\x05garbage")
    with pytest.raises(CheckpointError, match="is corrupt or unreadable"):
        checkpoint.load(tmp_path, config_fingerprint="abc")
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        checkpoint.load(tmp_path / "none", config_fingerprint="abc")


def test_checkpoint_keeps_every_kind_of_state_exactly(tmp_path):
    rng = np.random.default_rng(2**100 + 7)
    state = DriverState(
        server_round=5,
        params=[np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1], np.int64)],
        agg_state={
            "shapes": [((2, 3), "float32")],
            "round_settings": {"dp_clip": 0.25},
            "inner": {"c": [np.ones(2)]},
            "s": np.float32(1.5),
        },
        opt_state={"m": [np.zeros(2)], "t": 3},
        rng_state=dict(rng.bit_generator.state),
        rows=[{"round": 1, "fit/loss": float("nan"), "eval/acc": 0.5}],
        client_state={"round": 5, "clients": 1},
        loop_state={
            "privacy": {"participations": {"3": 2}},
            "dispatched": 4,
            "versions": {3: [np.full(2, 2.0)]},
        },
    )
    checkpoint.save(tmp_path, state, config_fingerprint="f")
    back = checkpoint.load(tmp_path, config_fingerprint="f")
    assert back.agg_state["shapes"] == [((2, 3), "float32")]  # tuples stay tuples
    assert back.agg_state["s"] == np.float32(1.5) and back.agg_state["s"].dtype == np.float32
    assert back.params[0].dtype == np.float32 and back.params[1].dtype == np.int64
    assert back.client_state == {"round": 5, "clients": 1}
    assert list(back.loop_state["versions"]) == [3]  # int keys stay int
    np.testing.assert_array_equal(back.loop_state["versions"][3][0], [2.0, 2.0])
    assert np.isnan(back.rows[0]["fit/loss"])
    assert back.loop_state["privacy"] == state.loop_state["privacy"]
    resumed = np.random.default_rng()
    resumed.bit_generator.state = back.rng_state
    assert resumed.integers(1 << 62) == rng.integers(1 << 62)


def test_loading_a_tampered_checkpoint_cannot_run_code(tmp_path):
    import io
    import json
    import pickle

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    # An object array carrying a pickle whose loading would create a file, and a JSON
    # document that points at it: the loader must refuse, never unpickle.
    payload = np.array([Exploit()], dtype=object)
    doc = {
        "format": checkpoint.FORMAT,
        "fingerprint": "f",
        "state": {
            "server_round": 1,
            "params": [{"__nd__": "a0"}],
            "agg_state": {},
            "opt_state": {},
            "rng_state": {},
            "rows": [],
            "client_state": {},
            "loop_state": {},
        },
    }
    buffer = io.BytesIO()
    np.savez(buffer, a0=payload, __state__=np.frombuffer(json.dumps(doc).encode(), np.uint8))
    (tmp_path / "checkpoint.npz").write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        checkpoint.load(tmp_path, config_fingerprint="f")
    assert not marker.exists()
    # A raw pickle under the checkpoint's name is refused too, and runs nothing.
    (tmp_path / "checkpoint.npz").write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(CheckpointError):
        checkpoint.load(tmp_path, config_fingerprint="f")
    assert not marker.exists()


def _metrics(d):
    df = pd.read_csv(d / "metrics.csv")
    return df[[c for c in df.columns if not c.startswith("time/")]]


@pytest.mark.keras
def test_api_resume_matches_uninterrupted_run(tmp_path, linreg_config):
    pytest.importorskip("tensorflow")
    from fedray import api

    common = [
        "runtime.executor=local",
        "runtime.progress=false",
        "data.num_clients=4",
        "strategy.name=fedyogi",
        "strategy.fraction_fit=0.5",
    ]
    full = api.run(linreg_config, out=tmp_path / "full", overrides=[*common, "rounds=6"])
    api.run(linreg_config, out=tmp_path / "cut", overrides=[*common, "rounds=3"])
    resumed = api.run(
        linreg_config, out=tmp_path / "cut", overrides=[*common, "rounds=6"], resume=True
    )
    for a, b in zip(full.params, resumed.params):
        np.testing.assert_array_equal(a, b)
    pd.testing.assert_frame_equal(_metrics(tmp_path / "full"), _metrics(tmp_path / "cut"))
    with pytest.raises(CheckpointError, match="different configuration"):
        api.run(
            linreg_config,
            out=tmp_path / "cut",
            overrides=[*common, "rounds=8", "client.learning_rate=0.5"],
            resume=True,
        )


@pytest.mark.slow
def test_sigkill_mid_run_then_the_same_command_again_equals_uninterrupted(tmp_path):
    """A retried job (spot node, KubeRay) runs the same command: it continues, not restarts."""
    pytest.importorskip("tensorflow")
    from fedray import api

    args = [
        "--set",
        "rounds=60",
        "--set",
        "data.num_clients=4",
        "--set",
        "runtime.clients_per_actor=4",
    ]
    cut = tmp_path / "cut"
    cmd = [
        sys.executable,
        "-m",
        "fedray",
        "run",
        str(ROOT / "experiments" / "blobs.yaml"),
        "--local",
        "--no-progress",
        "--out",
        str(cut),
        "--resume-if-exists",
        *args,
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if (cut / "metrics.csv").exists() and len(pd.read_csv(cut / "metrics.csv")) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = checkpoint.load(cut, config_fingerprint=_fp(args))
    done = before.server_round
    assert 3 <= done < 60
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    after = checkpoint.load(cut, config_fingerprint=_fp(args))
    assert after.rows[:done] == before.rows  # continued: the first rounds, timings and all
    overrides = [a for a in args if a != "--set"] + [
        "runtime.executor=local",
        "runtime.progress=false",
    ]
    full = api.run(ROOT / "experiments" / "blobs.yaml", out=tmp_path / "full", overrides=overrides)
    assert after.server_round == 60
    for a, b in zip(full.params, after.params, strict=True):
        np.testing.assert_array_equal(a, b)
    pd.testing.assert_frame_equal(_metrics(tmp_path / "full"), _metrics(cut))


def test_resume_if_exists_needs_out(capsys):
    from fedray.cli import main

    assert main(["run", "experiments/linreg.yaml", "--resume-if-exists"]) == 2
    assert "--resume-if-exists needs --out DIR" in capsys.readouterr().err


def _fp(args):
    from fedray import config

    overrides = [a for a in args if a != "--set"]
    return checkpoint.fingerprint(
        config.load(ROOT / "experiments" / "blobs.yaml", overrides).to_dict()
    )
