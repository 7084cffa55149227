"""Hyperparameter sweeps: a grid of whole federated runs, each a Ray Tune trial.

``fedray sweep CONFIG --grid client.learning_rate=[0.005,0.01] --grid
strategy.name=[fedavg,fedadam] --seeds 3`` runs every combination (times every seed)
as one trial of :mod:`fedray.sweeps.tune`: a complete run with its own hosts, which
Ray reserves for it as one placement group, so trials never oversubscribe the cluster.

A sweep directory holds:

* ``sweep.json``: the config, the grid, the seeds and every trial's overrides;
* ``runs/<trial>/``: each trial's ordinary run directory (``fedray report`` works on it);
* ``sweep.csv``: one row per trial (the grid values, its state, the final and best
  metric, ε when DP is on, the time) and ``sweep.png``: the curves, mean ± std over
  seeds;
* ``tune/``: Ray Tune's experiment state, from which an interrupted sweep resumes.

The same command with the same ``--out`` resumes: finished trials are kept, and
unfinished ones continue from their own checkpoints (fedray's exact resume).

This module has no Ray in it: the plan, the table and the plot.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from fedray import config as config_mod
from fedray.errors import ConfigError, FedrayError

logger = logging.getLogger(__name__)

PLAN = "sweep.json"
ERROR_FILE = "error.txt"
"""A failed trial's reason, one line, in its run directory (the table's ``error``)."""


def run_dir(out: str | Path, trial: str) -> Path:
    """Trial ``trial``'s ordinary run directory inside the sweep directory ``out``."""
    return Path(out) / "runs" / trial


@dataclass(frozen=True)
class Trial:
    """One combination of the grid with one seed: a whole run.

    Attributes:
        name: Its run directory under ``runs/`` (``t000``, ``t001``, ...).
        values: The grid's keys and this trial's values, plus ``seed``.
        overrides: What the run gets on top of the sweep's config (``--set`` syntax).
    """

    name: str
    values: dict[str, Any]
    overrides: list[str]


@dataclass(frozen=True)
class SweepPlan:
    """Everything needed to run (or resume, or report) a sweep; saved as ``sweep.json``."""

    config: dict[str, Any]
    grid: dict[str, list[Any]]
    seeds: list[int]
    trials: list[Trial]
    metric: str | None = None
    mode: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def save(self, out: Path) -> None:
        """Write ``sweep.json`` into ``out``."""
        (out / PLAN).write_text(json.dumps(asdict(self), indent=2, default=str))

    @classmethod
    def load(cls, out: str | Path) -> SweepPlan:
        """Read ``out/sweep.json``.

        Raises:
            FedrayError: ``out`` holds no sweep.
        """
        path = Path(out) / PLAN
        if not path.is_file():
            raise FedrayError(f"'{out}' is not a fedray sweep directory: no {PLAN} in it")
        raw = json.loads(path.read_text())
        raw["trials"] = [Trial(**t) for t in raw["trials"]]
        return cls(**raw)


def parse_grid(items: Iterable[str]) -> dict[str, list[Any]]:
    """``KEY=[v1,v2,...]`` strings (values in YAML) into ``{KEY: [v1, v2, ...]}``.

    >>> parse_grid(["client.learning_rate=[0.005, 0.01]", "strategy.name=[fedavg,fedadam]"])
    {'client.learning_rate': [0.005, 0.01], 'strategy.name': ['fedavg', 'fedadam']}

    Raises:
        ConfigError: A malformed item, an empty or repeated key.
    """
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        try:
            values = yaml.safe_load(text) if sep else None
        except yaml.YAMLError:
            values = None
        if not key or not isinstance(values, list) or not values:
            raise ConfigError(
                f"--grid {item!r}: expected KEY=[v1,v2,...], e.g. client.learning_rate=[0.01,0.1]"
            )
        if key in grid:
            raise ConfigError(f"--grid {key}: given twice; expected each key once")
        if key == "seed":
            raise ConfigError("--grid seed: use --seeds N (N seeds per combination)")
        grid[key] = values
    return grid


def _text(value: Any) -> str:
    """A value in ``--set`` syntax (YAML flow style for lists and mappings)."""
    if isinstance(value, (list, dict)):
        return yaml.safe_dump(value, default_flow_style=True).strip()
    return str(value)


def plan(
    config: str | Path | Mapping[str, Any],
    grid: Mapping[str, Sequence[Any]],
    *,
    seeds: int = 1,
    overrides: Iterable[str] = (),
    metric: str | None = None,
    mode: str | None = None,
) -> SweepPlan:
    """Validate every trial's config up front and name the trials.

    Seeds are the config's ``seed``, ``seed + 1``, ... Every combination is loaded (and
    so checked, :func:`fedray.strategy.rules.check_compatible` included) before anything starts.

    Raises:
        ConfigError: A bad key or value, or a combination that cannot run; the message
            names the trial's values.
    """
    if seeds < 1:
        raise ConfigError(f"--seeds {seeds}: expected an integer >= 1")
    if mode not in (None, "min", "max"):
        raise ConfigError(f"--mode {mode!r}: expected 'min' or 'max'")
    base = config_mod.load(config, overrides)
    keys = list(grid)
    trials: list[Trial] = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        for s in range(seeds):
            values = {**dict(zip(keys, combo, strict=True)), "seed": base.seed + s}
            over = [f"{k}={_text(v)}" for k, v in values.items()]
            try:
                trial = config_mod.load(base, over)
                if trial.data.placement:  # would wait for ever inside its placement group
                    raise ConfigError(
                        f"data.placement={trial.data.placement!r} pins hosts to nodes by "
                        "custom resources, which a trial's placement group does not hold; "
                        "unset data.placement for a sweep"
                    )
                if trial.runtime.gpus_per_host == "auto":
                    raise ConfigError(
                        "runtime.gpus_per_host='auto' measures a probe host before the "
                        "hosts start, which a trial's reservation cannot hold; give a share"
                    )
            except ConfigError as exc:
                shown = ", ".join(over)
                raise ConfigError(f"sweep trial {shown}: {exc}") from None
            trials.append(Trial(f"t{len(trials):03d}", values, over))
    return SweepPlan(
        base.to_dict(),
        {k: list(v) for k, v in grid.items()},
        [base.seed + s for s in range(seeds)],
        trials,
        metric,
        mode,
    )


def default_out(config: Any) -> Path:
    """``runs/sweep-<config name>-<timestamp>``."""
    stem = Path(str(config)).stem if isinstance(config, (str, Path)) else "run"
    return Path("runs") / f"sweep-{stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def pick_metric(columns: Iterable[str], metric: str | None, mode: str | None) -> tuple[str, str]:
    """The metric the table ranks by, and whether lower or higher is better.

    Default: ``eval/accuracy`` (max), else ``eval/loss``, else ``fit/loss`` (min).

    >>> pick_metric(["fit/loss", "eval/loss"], None, None)
    ('eval/loss', 'min')
    """
    cols = set(columns)
    if metric is None:
        metric = next((m for m in ("eval/accuracy", "eval/loss", "fit/loss") if m in cols), "")
    if mode is None:
        mode = "max" if any(w in metric for w in ("accuracy", "auc", "precision")) else "min"
    return metric, mode


def table(out: str | Path, states: Mapping[str, str] | None = None) -> Any:
    """The sweep as a DataFrame, one row per trial, from the trials' run directories.

    ``states`` are Tune's trial states by trial name (a reported sweep reads them from
    the run directories: ``TERMINATED`` when a run finished, ``ERROR`` with its reason
    in the ``error`` column when it failed, else ``PENDING``).
    """
    import pandas as pd

    sweep = SweepPlan.load(out)
    rows = []
    for t in sweep.trials:
        run = run_dir(out, t.name)
        row: dict[str, Any] = {"trial": t.name, **t.values}
        metrics = run / "metrics.csv"
        df = pd.read_csv(metrics) if metrics.is_file() else pd.DataFrame()
        summary = run / "summary.json"
        info = json.loads(summary.read_text()) if summary.is_file() else {}
        error = run / ERROR_FILE  # written by a trial that failed (sweeps.tune)
        why = error.read_text().strip() if error.is_file() else ""
        fallback = "TERMINATED" if info else ("ERROR" if why else "PENDING")
        row["state"] = (states or {}).get(t.name) or fallback
        row["rounds"] = int(df["round"].max()) if "round" in df else 0
        metric, mode = pick_metric(df.columns, sweep.metric, sweep.mode)
        if metric in df and df[metric].notna().any():
            values = df[metric].to_numpy(dtype=float)
            best = int(np.nanargmin(values) if mode == "min" else np.nanargmax(values))
            row["metric"] = metric
            row["final"] = float(df[metric].dropna().iloc[-1])
            row["best"] = float(values[best])
            row["best_round"] = int(df["round"].iloc[best])
        privacy = info.get("privacy") or {}
        eps = privacy.get("epsilon")
        if eps is None and "privacy/epsilon" in df and df["privacy/epsilon"].notna().any():
            eps = df["privacy/epsilon"].dropna().iloc[-1]
        if eps is not None:
            row["epsilon"] = float(eps)
        row["time_s"] = float(info.get("time", {}).get("total_s", math.nan))
        row["error"] = why
        row["out"] = str(run)
        rows.append(row)
    df = pd.DataFrame(rows)
    names = [str(m) for m in df.get("metric", pd.Series(dtype=object)).dropna().unique()]
    df.attrs["metric"], df.attrs["mode"] = pick_metric(names, sweep.metric, sweep.mode)
    return df


def curves(out: str | Path) -> tuple[Any, str]:
    """Per round: the metric's mean and std over seeds for each combination."""
    import pandas as pd

    sweep = SweepPlan.load(out)
    frames = []
    for t in sweep.trials:
        metrics = run_dir(out, t.name) / "metrics.csv"
        if metrics.is_file():
            df = pd.read_csv(metrics)
            combo = ", ".join(f"{k}={v}" for k, v in t.values.items() if k != "seed")
            frames.append(df.assign(combo=combo or "config"))
    if not frames:
        raise FedrayError(f"no trial of '{out}' has written metrics yet")
    df = pd.concat(frames, ignore_index=True)
    metric, _ = pick_metric(df.columns, sweep.metric, sweep.mode)
    stats = df.groupby(["combo", "round"])[metric].agg(["mean", "std", "count"]).reset_index()
    return stats, metric


def plot(out: str | Path) -> Path:
    """``sweep.png``: each combination's curve, mean ± std over its seeds."""
    from fedray.reports import save_figure, sweep_figure

    stats, metric = curves(out)
    return save_figure(sweep_figure(stats, metric, Path(out).name), Path(out) / "sweep.png")


def _cell(value: Any) -> str:
    """A table cell: floats to 4 significant digits, missing values as a dash.

    >>> _cell(0.123456), _cell(float("nan")), _cell(None), _cell("fedavg")
    ('0.1235', '–', '–', 'fedavg')
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def summary_table(df: Any) -> Any:
    """The sweep's table for the terminal (rich), best trial first."""
    from rich.table import Table

    shown = df.drop(columns=["out", "sweep_epsilon"], errors="ignore")  # ε: the caption
    if "error" in shown and not shown["error"].astype(bool).any():
        shown = shown.drop(columns=["error"])
    title = "fedray sweep"
    if "best" in shown and shown["best"].notna().any():
        mode = df.attrs.get("mode") or "min"
        title += f": {df.attrs.get('metric')} ({mode}), best first"
        shown = shown.sort_values("best", ascending=(mode == "min"), na_position="last")
    caption = None
    report = df.attrs.get("privacy")
    if report:
        caption = (
            f"sweep ε = {report['epsilon']:.4g} at δ = {report['delta']:.3g} "
            f"({report['accountant']}, {report['composition']} composition of "
            f"{report['runs']} trials): the cost of releasing any trial's model, the best "
            "one included"
        )
    t = Table(title=title, caption=caption)
    for col in shown.columns:
        t.add_column(str(col), justify="right" if shown[col].dtype.kind in "fiu" else "left")
    for row in shown.itertuples(index=False):
        t.add_row(*(_cell(v) for v in row))
    return t


def privacy(out: str | Path) -> dict[str, Any] | None:
    """The sweep's ε: every trial's charges, composed (None without DP).

    The table ranks trials trained on the same clients, so the model it puts first was
    chosen by looking at all of them: releasing it costs the composition of every
    trial's releases (failed and unfinished trials included, from their privacy
    journals), not that trial's own ε (:func:`fedray.privacy.journal.compose_runs`).
    """
    from fedray.privacy import journal

    sweep = SweepPlan.load(out)
    runs = [journal.read(run_dir(out, t.name) / journal.FILENAME) for t in sweep.trials]
    return journal.compose_runs(runs)


def write(out: str | Path, states: Mapping[str, str] | None = None) -> Any:
    """Write ``sweep.csv`` and ``sweep.png`` (and the sweep's ε in ``sweep.json``).

    Returns the table; under DP its ``sweep_epsilon`` column, and ``attrs["privacy"]``,
    hold what releasing any of its models costs (:func:`privacy`).
    """
    df = table(out, states)
    report = privacy(out)
    if report is not None:
        df["sweep_epsilon"] = report["epsilon"]
        df.attrs["privacy"] = report
        sweep = SweepPlan.load(out)
        sweep.extra["privacy"] = report
        sweep.save(Path(out))
    df.to_csv(Path(out) / "sweep.csv", index=False)
    if (df["rounds"] > 0).any():
        plot(out)
    return df


def sweep(  # noqa: PLR0913 - the public call, keyword-only options as fedray.fit
    config: str | Path | Mapping[str, Any],
    *,
    grid: Mapping[str, Sequence[Any]],
    seeds: int = 1,
    out: str | Path | None = None,
    overrides: Iterable[str] = (),
    max_concurrent: int | None = None,
    metric: str | None = None,
    mode: str | None = None,
    address: str | None = None,
    progress: bool = False,
) -> Any:
    """Run every combination of ``grid`` (times ``seeds``) as a Ray Tune trial.

    Example::

        df = fedray.sweep("experiments/linreg.yaml",
                          grid={"client.learning_rate": [0.005, 0.01]}, seeds=2)

    Args:
        config: A YAML path or a nested dict.
        grid: Config keys and the values each takes.
        seeds: Runs per combination, seeds ``seed``, ``seed + 1``, ...
        out: The sweep directory (default ``runs/sweep-<config>-<timestamp>``). When it
            already holds this sweep, the sweep resumes.
        overrides: ``key=value`` strings applied to every trial.
        max_concurrent: Trials at once (default: as many as the CPUs hold, one CPU each).
        metric: The metric to rank by (default ``eval/accuracy``, else a loss).
        mode: ``min`` or ``max`` (default from the metric's name).
        address: A Ray cluster to join (default: a private local instance).
        progress: A live table of the trials in the terminal.

    Returns:
        The table (a pandas DataFrame), also in ``out/sweep.csv``.
    """
    from fedray.sweeps.tune import run_sweep

    if address == "fedray":
        raise ConfigError(
            "--address fedray: the warm hosts of `fedray up` serve one run at a time; a sweep "
            "starts each trial's own hosts (leave --address unset, or give a cluster's)"
        )
    sweep_plan = plan(config, grid, seeds=seeds, overrides=overrides, metric=metric, mode=mode)
    if sweep_plan.config.get("privacy", {}).get("dp") and len(sweep_plan.trials) > 1:
        logger.warning(
            "under DP, the %d trials train on the same clients and the best is chosen by "
            "looking at all of them: its model costs the sweep's ε, every trial's composed "
            "(sweep.json, the table's caption), not its own",
            len(sweep_plan.trials),
        )
    out_dir = Path(out) if out is not None else default_out(config)
    if (out_dir / PLAN).is_file():
        before = SweepPlan.load(out_dir)
        if (before.config, before.grid, before.seeds) != (
            sweep_plan.config,
            sweep_plan.grid,
            sweep_plan.seeds,
        ):
            raise FedrayError(
                f"--out {out_dir}: it holds a different sweep (config, grid or seeds); "
                "expected the same command to resume it, or a new --out"
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    sweep_plan.save(out_dir)
    states = run_sweep(
        out_dir.resolve(),
        sweep_plan,
        max_concurrent=max_concurrent,
        address=address,
        progress=progress,
    )
    return write(out_dir, states)
