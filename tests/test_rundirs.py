"""Run directories: nothing left behind by a failed start, temporary ones cleaned up.

Hosts train with numpy (:class:`tests.fakes.NumpyTrainer`), so these whole runs need no
TensorFlow and stay in the pure tier.
"""

import gc
import subprocess
import sys
import tempfile

import pytest

import fedray
from fedray.callbacks import Callback
from fedray.cli import main
from fedray.errors import DataError, RoundFailedError
from tests.conftest import ROOT

LOCAL = {"executor": "local", "progress": False}
DP = {"dp": {"mode": "central", "noise_multiplier": 1.0, "clip": 1.0, "delta": 1e-5}}


@pytest.fixture
def numpy_hosts(monkeypatch, tmp_path):
    """Hosts train with numpy; temporary directories go to ``tmp_path/tmp``; cwd is empty."""
    import fedray.client.trainer as trainer_mod
    from tests.fakes import NumpyTrainer

    monkeypatch.setattr(trainer_mod, "KerasTrainer", NumpyTrainer)
    (tmp_path / "tmp").mkdir()
    (tmp_path / "cwd").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.chdir(tmp_path / "cwd")
    return tmp_path


class Boom(Callback):
    """A user's callback with a bug: it raises before the first round."""

    def on_run_begin(self, logs):
        raise RuntimeError("my callback is broken")


def test_a_cli_run_that_fails_before_its_first_round_leaves_no_directory(numpy_hosts, capsys):
    linreg = str(ROOT / "experiments" / "linreg.yaml")
    assert main(["run", linreg, "--local", "--set", "data.num_clients=1000"]) == 2
    assert "data.num_clients=1000" in capsys.readouterr().err
    assert list((numpy_hosts / "cwd").iterdir()) == []  # no runs/<config>-<timestamp>/, no runs/


def test_an_api_run_that_fails_before_its_first_round_leaves_no_directory(numpy_hosts):
    with pytest.raises(DataError):
        fedray.run({"data": {"num_clients": 1000}, "runtime": LOCAL})
    assert list((numpy_hosts / "tmp").iterdir()) == []  # no /tmp/fedray-XXXXXXXX
    with pytest.raises(RuntimeError, match="my callback is broken"):
        fedray.run({"rounds": 2, "runtime": LOCAL}, out=numpy_hosts / "o", callbacks=[Boom()])
    assert not (numpy_hosts / "o").exists()


class BoomAfterRound1(Callback):
    """A user's callback with a bug that shows after round 1 (its releases were charged)."""

    def on_round_end(self, server_round, logs):
        raise RuntimeError("my callback is broken")


def test_a_failed_run_keeps_its_directory_when_it_holds_privacy_charges(numpy_hosts):
    out = numpy_hosts / "o"
    later = BoomAfterRound1()
    cfg = {"rounds": 2, "runtime": LOCAL, "privacy": DP, "checkpoint": {"every": 0}}
    with pytest.raises(RuntimeError, match="my callback is broken"):
        fedray.run(cfg, out=out, callbacks=[later])
    assert '"kind":"charge"' in (out / "privacy-journal.jsonl").read_text()
    # A run that fails before anything was charged leaves nothing: its journal is empty.
    early = numpy_hosts / "early"
    with pytest.raises(RuntimeError, match="my callback is broken"):
        fedray.run({"rounds": 2, "runtime": LOCAL, "privacy": DP}, out=early, callbacks=[Boom()])
    assert not early.exists()


def test_a_directory_the_user_made_is_never_removed(numpy_hosts):
    out = numpy_hosts / "mine"
    out.mkdir()
    with pytest.raises(RuntimeError, match="my callback is broken"):
        fedray.run({"rounds": 2, "runtime": LOCAL}, out=out, callbacks=[Boom()])
    assert out.is_dir()


def test_a_run_without_survivors_in_round_1_keeps_its_failures_but_offers_no_resume(numpy_hosts):
    out = numpy_hosts / "o"
    faults = {"crash_rate": 1.0}
    with pytest.raises(RoundFailedError) as err:
        fedray.run({"rounds": 2, "runtime": LOCAL, "faults": faults}, out=out)
    assert (out / "failures.csv").is_file() and not (out / "checkpoint.npz").exists()
    assert "--resume" not in str(err.value)  # nothing to resume: no round was committed
    assert f"Details: {out / 'failures.csv'}; no round was committed" in str(err.value)


def test_a_run_without_out_uses_a_temporary_directory_removed_with_its_history(numpy_hosts):
    history = fedray.run({"rounds": 2, "runtime": LOCAL})
    out = history.out_dir
    assert out.parent == numpy_hosts / "tmp" and out.name.startswith("fedray-")
    assert (out / "summary.json").is_file() and (out / "model.keras").is_file()
    assert not (out / "checkpoint.npz").exists()  # nothing could resume it
    del history
    gc.collect()
    assert not out.exists()


def test_a_temporary_directory_goes_with_its_history_under_dp_too(numpy_hosts):
    # Its journal could serve no resume (a random name, no checkpoint): nothing to keep.
    history = fedray.run({"rounds": 2, "runtime": LOCAL, "privacy": DP})
    out = history.out_dir
    assert '"kind":"charge"' in (out / "privacy-journal.jsonl").read_text()
    del history
    gc.collect()
    assert not out.exists()


@pytest.mark.slow
def test_a_temporary_directory_is_removed_at_exit(tmp_path):
    script = (
        "import fedray, fedray.client.trainer as t, tests.fakes as f\n"
        "t.KerasTrainer = f.NumpyTrainer\n"
        "h = fedray.run({'rounds': 1, 'runtime': {'executor': 'local', 'progress': False}})\n"
        "print(h.out_dir)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "TMPDIR": str(tmp_path)},
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().startswith(str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_a_run_interrupted_with_ctrl_c_keeps_the_rounds_it_ran(numpy_hosts):
    class CtrlC(Callback):
        def on_round_end(self, server_round, logs):
            raise KeyboardInterrupt

    out = numpy_hosts / "o"
    with pytest.raises(KeyboardInterrupt):
        fedray.run(
            {"rounds": 3, "runtime": LOCAL, "checkpoint": {"every": 0}},
            out=out,
            callbacks=[CtrlC()],
        )
    assert (out / "metrics.csv").read_text().count("\n") == 2  # the header and round 1
