"""Looking at finished runs.

Curves (``fedray plot``, and a sweep's ``sweep.png``), a summary table (``fedray
report``) and predictions from the saved model (``fedray predict``).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedray.errors import DataError, FedrayError
from fedray.records import FAILURE_CAUSES


def load_run(run_dir: str | Path) -> tuple[Any, dict[str, Any]]:
    """A run's metrics (DataFrame) and summary (dict).

    Raises:
        FedrayError: ``run_dir`` is not a finished fedray run directory.
    """
    import pandas as pd

    d = Path(run_dir)
    metrics, summary = d / "metrics.csv", d / "summary.json"
    missing = [p.name for p in (metrics, summary) if not p.is_file()]
    if missing:
        raise FedrayError(
            f"'{d}' is not a finished fedray run: missing {', '.join(missing)} "
            "(expected the --out directory of `fedray run`)"
        )
    return pd.read_csv(metrics), json.loads(summary.read_text())


def default_metrics(df: Any) -> list[str]:
    """Loss and metric columns worth plotting, in a stable order."""
    prefer = [c for c in df.columns if c.startswith(("eval/", "fed_eval/"))]
    prefer += [c for c in ("fit/loss",) if c in df.columns]
    return [c for c in prefer if not c.endswith("/clients")]


def check_metrics(runs: Sequence[tuple[str, Any]], metrics: Sequence[str]) -> None:
    """Refuse a metric that no run logs: one line with a "did you mean" and the choices.

    Raises:
        FedrayError: A name in ``metrics`` is a column of none of the runs' tables.
    """
    logged = list(dict.fromkeys(c for _, df in runs for c in df.columns if c != "round"))
    for name in metrics:
        if name not in logged:
            hint = difflib.get_close_matches(name, logged, n=1)
            also = f" (did you mean {hint[0]!r}?)" if hint else ""
            shown = ", ".join(logged[:30]) + (", ..." if len(logged) > 30 else "")
            raise FedrayError(f"--metric {name!r}: no run logs it{also}; expected one of: {shown}")


_MARKERS = ("o", "s", "^", "D", "v", "P")
_DASHES = ("-", "--", ":", "-.")


def curve_style(i: int) -> dict[str, Any]:
    """Curve ``i``'s marker, line style and width: no two of the first 12 alike.

    Each curve is drawn thinner, with a smaller marker, than the one before (in a cycle
    of four) and half-transparent, so curves that coincide (two runs, or two
    combinations of a sweep, that ended alike) still show each other.

    >>> curve_style(0)
    {'marker': 'o', 'linestyle': '-', 'linewidth': 2.6, 'markersize': 7.0, 'alpha': 0.8}
    >>> curve_style(5)["linestyle"], curve_style(5)["linewidth"]
    ('--', 2.0)
    """
    size = i % 4
    return {
        "marker": _MARKERS[i % len(_MARKERS)],
        "linestyle": _DASHES[i % len(_DASHES)],
        "linewidth": round(2.6 - 0.6 * size, 1),
        "markersize": 7.0 - 1.5 * size,
        "alpha": 0.8,
    }


def round_axis(ax: Any) -> None:
    """Label ``ax``'s x axis in whole rounds (never 1.25)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, out: str | Path) -> Path:
    """Write ``fig`` to the PNG ``out`` (its folder made if need be) and close it."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def runs_figure(run_dirs: Sequence[str | Path], metrics: Sequence[str] | None = None) -> Any:
    """The figure of :func:`plot_runs`: per metric, by round and by wall-clock time.

    Raises:
        FedrayError: A run directory is not a finished run, or no run logs a metric.
    """
    runs = [(Path(d).name, *load_run(d)) for d in run_dirs]
    names = list(metrics or default_metrics(runs[0][1]))
    if not names:
        raise FedrayError(f"no metrics to plot in '{run_dirs[0]}'")
    check_metrics([(label, df) for label, df, _ in runs], names)
    height = 3.2 * len(names) + 0.4
    fig, axes = _pyplot().subplots(len(names), 2, figsize=(10, height), squeeze=False)
    for row, name in enumerate(names):
        for i, (label, df, _) in enumerate(runs):
            if name not in df.columns:
                continue
            wall = df["time/round_s"].cumsum()
            seen = df[name].notna()  # e.g. federated evaluation every few rounds
            style = {"label": label, **curve_style(i)}
            axes[row][0].plot(df["round"][seen], df[name][seen], **style)
            axes[row][1].plot(wall[seen], df[name][seen], **style)
        round_axis(axes[row][0])
        axes[row][0].set_title(f"{name} by round")
        axes[row][1].set_xlabel("wall-clock time in rounds (s)")
        axes[row][1].set_title(f"{name} by wall-clock time")
        for ax in axes[row]:
            ax.set_ylabel(name)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(", ".join(label for label, _, _ in runs))
    fig.tight_layout()
    return fig


def plot_runs(
    run_dirs: Sequence[str | Path], out: str | Path, metrics: Sequence[str] | None = None
) -> Path:
    """Draw each metric vs round and vs wall-clock time, one line per run, into a PNG.

    Raises:
        FedrayError: A run directory is not a finished run, or no run logs a metric
            (nothing is written then).
    """
    return save_figure(runs_figure(run_dirs, metrics), out)


def sweep_figure(stats: Any, metric: str, name: str) -> Any:
    """A sweep's curves (:func:`fedray.sweeps.curves`): per combination, mean ± std over seeds.

    Each combination has its own marker, line style and width (:func:`curve_style`), so
    curves that coincide stay visible; the title names the sweep ``name``, the metric and
    the seeds.
    """
    seeds = int(stats["count"].max())
    fig, ax = _pyplot().subplots(figsize=(7.5, 4.5))
    for i, (combo, g) in enumerate(stats.groupby("combo", sort=False)):
        label = f"{combo} (n={int(g['count'].max())})"
        (line,) = ax.plot(g["round"], g["mean"], label=label, **curve_style(i))
        std = g["std"].fillna(0.0)
        below, above = g["mean"] - std, g["mean"] + std
        ax.fill_between(g["round"], below, above, alpha=0.15, color=line.get_color())
    shown = "one seed per combination" if seeds == 1 else f"mean ± std over {seeds} seeds"
    ax.set(ylabel=metric, title=f"{name}: {metric}, {shown}")
    round_axis(ax)
    low, high = stats["mean"].min(), stats["mean"].max()
    if low > 0 and high / low > 100:  # losses that fall by orders of magnitude
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def report(run_dir: str | Path) -> Any:
    """A rich Table summarising one run: setup, final metrics and timings."""
    from rich.table import Table

    df, summary = load_run(run_dir)
    cfg = summary["config"]
    table = Table(title=f"fedray run: {Path(run_dir)}", show_header=True)
    table.add_column("item")
    table.add_column("value", justify="right")
    setup = [
        ("dataset", cfg["data"]["dataset"]),
        ("clients", cfg["data"]["num_clients"]),
        ("partition", cfg["data"]["partition"]),
        ("model", cfg["model"]["name"]),
        ("strategy", cfg["strategy"]["name"]),
        ("rounds", len(df)),
    ]
    for key, value in setup:
        table.add_row(key, str(value))
    final = summary.get("final", {})
    for key in sorted(final):
        if key.startswith(("fit/", "eval/", "fed_eval/", "clients/")):
            value = final[key]
            table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    for key, value in summary.get("time", {}).items():
        if value is not None:
            table.add_row(f"time/{key}", f"{value:.3f}")
    failed = int(df["clients/failed"].sum()) if "clients/failed" in df else 0
    table.add_row("client failures (all rounds)", str(failed))
    for column in sorted(c for c in df.columns if c.startswith("failed/")):
        cause = column.removeprefix("failed/")
        words = FAILURE_CAUSES.get(cause, cause)
        table.add_row(f"  {words} (failures.csv)", str(int(df[column].fillna(0).sum())))
    if "hosts/restarted" in df:
        reruns = int(df["clients/rerun"].fillna(0).sum()) if "clients/rerun" in df else 0
        restarts = int(df["hosts/restarted"].fillna(0).sum())
        table.add_row("host calls re-run (clients)", f"{restarts} ({reruns})")
    privacy = summary.get("privacy") or {}
    for key in (
        "mode",
        "mechanism",
        "epsilon",
        "accountant",
        "epsilon_pld",
        "delta",
        "noise_multiplier",
        "rounds",
    ):
        if privacy.get(key) is not None:
            value = privacy[key]
            shown = f"{value:.4g}" if isinstance(value, float) else str(value)
            table.add_row(f"privacy/{key}", shown)
    if cfg.get("privacy", {}).get("secure_aggregation", {}).get("enabled"):
        table.add_row("secure aggregation", "SecAgg(+)")
    return table


def predict(run_dir: str | Path, input_path: str | Path, output_path: str | Path) -> Path:
    """Predict with the run's ``model.keras`` on a CSV or Parquet file; write a CSV.

    Feature columns are all numeric columns except the run's label column and its
    partition column. Classification runs write ``prob_<k>`` columns and ``prediction``.
    """
    import numpy as np
    import pandas as pd

    d = Path(run_dir)
    _, summary = load_run(d)
    model_path = d / "model.keras"
    if not model_path.is_file():
        raise FedrayError(f"'{d}' has no model.keras (expected the --out directory of a run)")
    src = Path(input_path)
    if not src.is_file():
        raise DataError(f"--input: file not found: '{src}' (expected a CSV or Parquet file)")
    try:
        df = pd.read_parquet(src) if src.suffix == ".parquet" else pd.read_csv(src)
    except Exception as exc:
        raise DataError(f"cannot read '{src}': {type(exc).__name__}: {exc}") from None
    data_cfg = summary["config"]["data"]
    drop = [c for c in (data_cfg.get("label"), data_cfg.get("column")) if c in df.columns]
    features = df.drop(columns=drop)
    bad = [str(c) for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
    if bad:
        raise DataError(f"'{src}': feature columns must be numeric; not numeric: {', '.join(bad)}")
    from fedray.client.devices import import_keras

    model = import_keras().saving.load_model(model_path)
    expected = tuple(model.input_shape[1:])
    x = features.to_numpy(dtype=np.float32)
    if x.shape[1:] != expected:
        raise DataError(
            f"'{src}' has {x.shape[1]} feature columns ({', '.join(map(str, features.columns))}); "
            f"the model expects input shape {expected}"
        )
    y = np.asarray(model.predict(x, verbose=0))
    out = pd.DataFrame(index=df.index)
    if y.shape[1] > 1:
        for k in range(y.shape[1]):
            out[f"prob_{k}"] = y[:, k]
        out["prediction"] = y.argmax(axis=1)
    else:
        out["prediction"] = y[:, 0]
    path = Path(output_path)
    out.to_csv(path, index=False)
    return path
