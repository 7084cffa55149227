"""CSVLogger: a valid CSV after every round, late columns, the Parquet copy; History is the
one row store the loop, the CSV log and the checkpoint share."""

import csv
import math

import pandas as pd

from fedray.callbacks import CSVLogger, History


def test_csv_is_rewritten_each_round_with_late_columns_left_empty(tmp_path):
    log, history = CSVLogger(tmp_path / "metrics.csv"), History()
    log.set_history(history)

    def end(server_round, logs):  # as the loop does: record first, then the callbacks
        history.record(server_round, logs)
        log.on_round_end(server_round, logs)

    end(1, {"fit/loss": 0.5, "clients/ok": 3})
    first = pd.read_csv(tmp_path / "metrics.csv")
    assert first.to_dict("list") == {"round": [1], "fit/loss": [0.5], "clients/ok": [3]}
    end(2, {"fit/loss": 0.25, "clients/ok": 4, "fed_eval/loss": 0.1 + 0.2})
    df = pd.read_csv(tmp_path / "metrics.csv")
    assert list(df.columns) == ["round", "fit/loss", "clients/ok", "fed_eval/loss"]
    assert math.isnan(df["fed_eval/loss"][0]) and df["fed_eval/loss"][1] == 0.1 + 0.2  # repr
    assert not (tmp_path / "metrics.parquet").exists()
    log.on_run_end({})
    pq = pd.read_parquet(tmp_path / "metrics.parquet")
    pd.testing.assert_frame_equal(pq, history.metrics)


def test_parquet_copy_can_be_deferred(tmp_path):
    log, history = CSVLogger(tmp_path / "metrics.csv", parquet=False), History()
    log.set_history(history)
    history.record(1, {"a": 1.0})
    log.on_round_end(1, {"a": 1.0})
    log.on_run_end({})
    assert not (tmp_path / "metrics.parquet").exists()
    log.write_parquet()
    assert pd.read_parquet(tmp_path / "metrics.parquet")["a"].tolist() == [1.0]


def test_the_loop_the_csv_log_and_the_checkpoint_share_one_row_store(tmp_path):
    """No callback keeps its own copy: the CSV and every checkpoint read the history."""
    from fedray.callbacks import CallbackList
    from fedray.loop import Checkpointer, run_rounds
    from fedray.strategy import fedavg
    from tests.fakes import QuadraticExecutor

    saved, seen = [], []

    class Spy(CSVLogger):
        def on_round_end(self, server_round, logs):
            seen.append(self.history.rows[-1]["round"])  # already recorded when told
            super().on_round_end(server_round, logs)

    log, history = Spy(tmp_path / "metrics.csv"), History()
    ex = QuadraticExecutor([[1.0], [3.0]], [1, 1])
    save = Checkpointer(lambda st: saved.append([dict(r) for r in st.rows]))
    run_rounds(
        strategy=fedavg(),
        executor=ex,
        rounds=3,
        seed=0,
        callback=CallbackList([log]),
        history=history,
        checkpoint=save,
    )
    assert log.rows is history.rows and seen == [1, 2, 3]
    assert saved[-1] == history.rows and [len(s) for s in saved] == [1, 2, 3]
    csv = pd.read_csv(tmp_path / "metrics.csv")
    assert csv["round"].tolist() == [1, 2, 3]
    assert csv["fit/loss"].tolist() == [r["fit/loss"] for r in history.rows]


def test_failure_log_writes_one_row_per_failure_and_rerun_and_keeps_only_checkpointed_rounds(
    tmp_path,
):
    from fedray.callbacks import FailureLog
    from fedray.records import ClientFailure, HostRecovery

    path = tmp_path / "failures.csv"
    log = FailureLog(path)
    log.set_history(History())
    log.on_run_begin({})
    log.on_failures(1, [ClientFailure(3, "ValueError: bad\nTraceback", "error", 1, 0)], [])
    log.on_failures(2, [], [HostRecovery(0, (0, 1), "host 0 died during fit", 0)])
    log.on_failures(3, [ClientFailure(4, "update contains NaN or Inf", "nan", 2, 1)], [])

    def rows():
        with path.open(newline="") as f:
            return list(csv.reader(f))

    assert rows() == [
        ["round", "attempt", "client", "host", "cause", "error"],
        ["1", "0", "3", "1", "error", "ValueError: bad"],  # the error's first line only
        ["2", "0", "", "0", "host_restart", "host 0 died during fit; re-ran clients [0, 1]"],
        ["3", "1", "4", "2", "nan", "update contains NaN or Inf"],
    ]
    # A run resumed from round 2's checkpoint runs round 3 again: its rows go first.
    before = rows()
    again = FailureLog(path)
    again.set_history(History([{"round": 1}, {"round": 2}]))
    again.on_run_begin({})
    assert rows() == before[:3]


# --- callbacks see the run and can stop it ---------------------------------------------


def _loop(callbacks, rounds=10, **kw):
    import numpy as np

    from fedray.callbacks import CallbackList
    from fedray.loop import run_rounds
    from fedray.strategy import fedavg
    from tests.fakes import QuadraticExecutor

    history = History()
    ex = QuadraticExecutor([[2.0], [8.0]], [1, 1])
    params = run_rounds(
        strategy=fedavg(),
        executor=ex,
        rounds=rounds,
        seed=0,
        callback=CallbackList(callbacks),
        history=history,
        **kw,
    )
    return np.asarray(params[0]), history.rows


def test_a_callback_stops_the_run_before_its_next_round(caplog):
    from fedray.callbacks import Callback

    seen = []

    class StopAtThree(Callback):
        def on_round_end(self, server_round, logs):
            seen.append((server_round, self.run.server_round, float(self.run.params[0][0])))
            if server_round == 3:
                self.run.stop("enough after round 3")

    params, rows = _loop([StopAtThree()])
    assert [r["round"] for r in rows] == [1, 2, 3]
    # The callback sees the round and the model it produced: w <- w + 0.5 (5 - w).
    assert [(r, s) for r, s, _ in seen] == [(1, 1), (2, 2), (3, 3)]
    assert [w for *_, w in seen] == [2.5, 3.75, 4.375] and params[0] == 4.375
    assert "enough after round 3" in caplog.text


def test_early_stopping_and_a_time_limit_are_callbacks():
    from fedray.callbacks import EarlyStopping, TimeLimit

    # eval/w climbs to 5 and stops improving once the steps fall below min_delta.
    _, rows = _loop([EarlyStopping("eval/w", patience=2, min_delta=0.1, mode="max")])
    ws = [r["eval/w"] for r in rows]
    assert len(rows) < 10 and all(b - a < 0.1 for a, b in zip(ws[-3:], ws[-2:]))
    _, rows = _loop([TimeLimit(0.0)])
    assert [r["round"] for r in rows] == [1]  # round 1 always runs, then the time is up
