"""CSVLogger: a valid CSV after every round, late columns, the Parquet copy."""

import math

import pandas as pd

from fedray.callbacks import CSVLogger


def test_csv_is_rewritten_each_round_with_late_columns_left_empty(tmp_path):
    log = CSVLogger(tmp_path / "metrics.csv")
    log.on_round_end(1, {"fit/loss": 0.5, "clients/ok": 3})
    first = pd.read_csv(tmp_path / "metrics.csv")
    assert first.to_dict("list") == {"round": [1], "fit/loss": [0.5], "clients/ok": [3]}
    log.on_round_end(2, {"fit/loss": 0.25, "clients/ok": 4, "fed_eval/loss": 0.1 + 0.2})
    df = pd.read_csv(tmp_path / "metrics.csv")
    assert list(df.columns) == ["round", "fit/loss", "clients/ok", "fed_eval/loss"]
    assert math.isnan(df["fed_eval/loss"][0]) and df["fed_eval/loss"][1] == 0.1 + 0.2  # repr
    assert not (tmp_path / "metrics.parquet").exists()
    log.on_run_end({})
    pq = pd.read_parquet(tmp_path / "metrics.parquet")
    pd.testing.assert_frame_equal(pq, pd.DataFrame(log.rows))


def test_parquet_copy_can_be_deferred(tmp_path):
    log = CSVLogger(tmp_path / "metrics.csv", parquet=False)
    log.on_round_end(1, {"a": 1.0})
    log.on_run_end({})
    assert not (tmp_path / "metrics.parquet").exists()
    log.write_parquet()
    assert pd.read_parquet(tmp_path / "metrics.parquet")["a"].tolist() == [1.0]
