"""Looking at finished runs.

Curves (``fedray plot``), a summary table (``fedray report``) and predictions from the
saved model (``fedray predict``).
"""

from __future__ import annotations

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


def plot_runs(
    run_dirs: Sequence[str | Path], out: str | Path, metrics: Sequence[str] | None = None
) -> Path:
    """Draw each metric vs round and vs wall-clock time, one line per run, into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(Path(d).name, *load_run(d)) for d in run_dirs]
    names = list(metrics or default_metrics(runs[0][1]))
    if not names:
        raise FedrayError(f"no metrics to plot in '{run_dirs[0]}'")
    fig, axes = plt.subplots(len(names), 2, figsize=(10, 3.2 * len(names)), squeeze=False)
    for row, name in enumerate(names):
        for label, df, _ in runs:
            if name not in df.columns:
                continue
            wall = df["time/round_s"].cumsum()
            seen = df[name].notna()  # e.g. federated evaluation every few rounds
            axes[row][0].plot(df["round"][seen], df[name][seen], marker=".", label=label)
            axes[row][1].plot(wall[seen], df[name][seen], marker=".", label=label)
        axes[row][0].set_xlabel("round")
        axes[row][1].set_xlabel("wall-clock time in rounds (s)")
        for ax in axes[row]:
            ax.set_ylabel(name)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
        "epsilon_rdp",
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
