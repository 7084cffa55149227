"""Plots a newcomer reads: `fedray plot` and a sweep's `sweep.png` (no TensorFlow, no Ray).

Run directories and sweeps are written by hand (`metrics.csv`, `summary.json`), as a
finished run leaves them, so each test takes well under a second.
"""

import json

import pandas as pd

from fedray import sweeps
from fedray.cli import main
from fedray.reports import runs_figure, sweep_figure
from tests.conftest import ROOT

LINREG = ROOT / "experiments" / "linreg.yaml"


def _run(d, losses, accuracy=None):
    """A finished run's directory with ``losses`` per round (and ``eval/accuracy``)."""
    d.mkdir(parents=True)
    rounds = range(1, len(losses) + 1)
    df = pd.DataFrame({"round": rounds, "time/round_s": 0.25, "fit/loss": losses})
    df["eval/loss"] = losses
    if accuracy is not None:
        df["eval/accuracy"] = accuracy
    df.to_csv(d / "metrics.csv", index=False)
    (d / "summary.json").write_text(json.dumps({"final": {"round": len(losses)}}))
    return d


def test_plot_of_a_metric_no_run_logs_is_one_line_naming_the_ones_they_do(tmp_path, capsys):
    run = _run(tmp_path / "a", [2.0, 1.0, 0.5], accuracy=[0.5, 0.6, 0.7])
    png = tmp_path / "out" / "c.png"
    metrics = ["--metric", "eval/loss", "--metric", "eval/acc"]
    code = main(["plot", str(run), *metrics, "--out", str(png)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err == (
        "fedray: error: --metric 'eval/acc': no run logs it (did you mean 'eval/accuracy'?); "
        "expected one of: time/round_s, fit/loss, eval/loss, eval/accuracy"
    )
    assert not png.exists() and not png.parent.exists()  # nothing written


def test_run_curves_have_whole_round_ticks_and_say_what_they_show(tmp_path):
    a = _run(tmp_path / "lr-0.01", [2.0, 1.0, 0.5])
    b = _run(tmp_path / "lr-0.05", [2.5, 1.5, 1.0])
    fig = runs_figure([a, b], ["eval/loss", "fit/loss"])
    by_round = fig.axes[0::2]
    for ax in by_round:
        ticks = [t for t in ax.get_xticks() if 1 <= t <= 3]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    assert [ax.get_title() for ax in fig.axes] == [
        "eval/loss by round",
        "eval/loss by wall-clock time",
        "fit/loss by round",
        "fit/loss by wall-clock time",
    ]
    assert fig._suptitle.get_text() == "lr-0.01, lr-0.05"


def _sweep(tmp_path, seeds, curves):
    out = tmp_path / "sweep-linreg-20261207-101010"  # the default name: sweep-<config>-<time>
    out.mkdir()
    p = sweeps.plan(LINREG, {"client.learning_rate": [0.01, 0.02, 0.05]}, seeds=seeds)
    p.save(out)
    for trial, losses in zip(p.trials, curves, strict=True):
        _run(sweeps.run_dir(out, trial.name), losses)
    return out


def test_sweep_plot_names_the_sweep_once_and_tells_overlapping_curves_apart(tmp_path):
    same = [3.0, 2.0, 1.0]  # three combinations with the same curve, one seed each
    out = _sweep(tmp_path, 1, [same, same, same])
    fig = sweep_figure(*sweeps.curves(out), out.name)
    ax = fig.axes[0]
    assert ax.get_title() == "sweep-linreg-20261207-101010: eval/loss, one seed per combination"
    lines = ax.get_lines()
    assert len(lines) == 3
    assert len({(line.get_marker(), line.get_linestyle()) for line in lines}) == 3
    assert all(line.get_alpha() is not None and line.get_alpha() < 1 for line in lines)
    ticks = [t for t in ax.get_xticks() if 1 <= t <= 3]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_sweep_plot_with_seeds_says_mean_and_std(tmp_path):
    curves = [[3.0, 2.0], [3.5, 2.5], [2.0, 1.0], [2.2, 1.2], [1.0, 0.5], [1.5, 0.7]]
    out = _sweep(tmp_path, 2, curves)
    fig = sweep_figure(*sweeps.curves(out), out.name)
    title = fig.axes[0].get_title()
    assert title == "sweep-linreg-20261207-101010: eval/loss, mean ± std over 2 seeds"
