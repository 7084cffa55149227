"""Seeing results: Parquet, TensorBoard scalars, plots, the report table and predict."""

import numpy as np
import pandas as pd
import pytest

from fedray import api
from fedray.cli import main
from fedray.errors import DataError, FedrayError
from fedray.reports import plot_runs, predict, report
from tests.conftest import ROOT

pytest.importorskip("tensorflow")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    out = {}
    for lr in (0.01, 0.05):
        out[lr] = api.run(
            ROOT / "experiments" / "hospitals.yaml",
            out=base / f"lr{lr}",
            overrides=[
                "rounds=3",
                f"client.learning_rate={lr}",
                f"data.path={ROOT / 'experiments/data/hospitals.csv'}",
                "runtime.executor=local",
                "runtime.progress=false",
            ],
        ).out_dir
    return out


@pytest.mark.keras
def test_parquet_matches_csv(runs):
    d = runs[0.01]
    csv, pq = pd.read_csv(d / "metrics.csv"), pd.read_parquet(d / "metrics.parquet")
    assert list(csv.columns) == list(pq.columns) and len(pq) == 3
    np.testing.assert_allclose(csv["eval/loss"], pq["eval/loss"])


def _read_scalars(tb_dir):
    """Parse TensorBoard event files (TFRecord framing: length, crc, data, crc)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    scalars = {}
    for path in sorted(tb_dir.glob("events.out.tfevents.*")):
        buf = path.read_bytes()
        pos = 0
        while pos < len(buf):
            (length,) = struct.unpack("<Q", buf[pos : pos + 8])
            event = Event.FromString(buf[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            for v in event.summary.value:
                scalars.setdefault(v.tag, []).append((event.step, v.simple_value))
    return scalars


@pytest.mark.keras
def test_tensorboard_scalars_per_round(runs):
    scalars = _read_scalars(runs[0.01] / "tb")
    assert {"fit/loss", "eval/loss", "eval/accuracy", "clients/ok", "time/round_s"} <= set(scalars)
    steps, values = zip(*scalars["eval/loss"])
    assert list(steps) == [1, 2, 3]
    csv = pd.read_csv(runs[0.01] / "metrics.csv")
    np.testing.assert_allclose(values, csv["eval/loss"], rtol=1e-6)


@pytest.mark.keras
def test_plot_overlays_runs(runs, tmp_path):
    png = plot_runs([runs[0.01], runs[0.05]], tmp_path / "c.png", ["eval/accuracy"])
    assert png.stat().st_size > 10_000
    assert main(["plot", str(runs[0.01]), str(runs[0.05]), "--out", str(tmp_path / "d.png")]) == 0
    assert (tmp_path / "d.png").stat().st_size > 10_000


@pytest.mark.keras
def test_report_table_lists_setup_and_final_metrics(runs, capsys):
    from rich.console import Console

    console = Console(record=True, width=120)
    console.print(report(runs[0.01]))
    text = console.export_text()
    assert "csv" in text and "eval/accuracy" in text and "client failures" in text
    assert main(["report", str(runs[0.01])]) == 0
    assert "eval/loss" in capsys.readouterr().out


@pytest.mark.keras
def test_predict_writes_the_models_predictions(runs, tmp_path):
    import keras

    src = tmp_path / "new.csv"
    df = pd.read_csv(ROOT / "experiments" / "data" / "hospitals.csv").head(20)
    df.to_csv(src, index=False)
    out = predict(runs[0.01], src, tmp_path / "p.csv")
    preds = pd.read_csv(out)
    assert list(preds.columns) == ["prob_0", "prob_1", "prediction"] and len(preds) == 20
    model = keras.saving.load_model(runs[0.01] / "model.keras")
    x = df.drop(columns=["label", "hospital"]).to_numpy(np.float32)
    np.testing.assert_allclose(preds[["prob_0", "prob_1"]], model.predict(x, verbose=0), rtol=1e-5)
    assert (preds.prediction == model.predict(x, verbose=0).argmax(1)).all()


@pytest.mark.keras
def test_predict_errors_are_clear(runs, tmp_path):
    with pytest.raises(DataError, match="--input: file not found"):
        predict(runs[0.01], tmp_path / "none.csv", tmp_path / "p.csv")
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"f0": [1.0], "f1": [2.0]}).to_csv(bad, index=False)
    with pytest.raises(DataError, match="has 2 feature columns .* expects input shape \\(6,\\)"):
        predict(runs[0.01], bad, tmp_path / "p.csv")
    with pytest.raises(FedrayError, match="is not a finished fedray run"):
        predict(tmp_path, bad, tmp_path / "p.csv")
