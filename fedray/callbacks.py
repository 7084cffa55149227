"""Callbacks: observers of the round loop (Keras-style, every hook a no-op).

``logs`` is a flat dict with namespaced keys: ``fit/loss``, ``eval/accuracy``,
``clients/ok``, ``time/round_s`` and so on. The CSV log, TensorBoard and the progress
bar are callbacks. :class:`History` is the run's one row store: the loop records each
round there (before its checkpoint and before any callback sees it), checkpoints save
its rows, and callbacks that need past rounds read them from it (``self.history``).
"""

from __future__ import annotations

import datetime
import logging
import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from fedray.records import ClientFailure, HostRecovery

logger = logging.getLogger(__name__)

Logs = dict[str, Any]


class History:
    """Every round's logs, in order: the run's only row store (as Keras' ``History``).

    :func:`fedray.loop.run_rounds` records each round here and the checkpoint saves
    :attr:`rows`. :func:`fedray.run` returns the same object
    (a :class:`~fedray.api.RunHistory`) with :attr:`out_dir`, :attr:`summary` and
    :attr:`params` filled in.

    Attributes:
        rows: One dict of logs per round (``round`` first).
        out_dir: Where ``metrics.csv``, ``summary.json`` and ``model.keras`` are.
        summary: The contents of ``summary.json``.
        params: The final global weights.
    """

    def __init__(self, rows: Iterable[Logs] = ()) -> None:
        self.rows: list[Logs] = [dict(r) for r in rows]
        self.out_dir: Path | None = None
        self.summary: dict[str, Any] = {}
        self.params: list[Any] = []

    def record(self, server_round: int, logs: Logs) -> None:
        """Append ``server_round``'s logs as a new row."""
        self.rows.append({"round": server_round, **logs})

    @property
    def metrics(self) -> Any:
        """Per-round metrics as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.rows)

    @property
    def final(self) -> dict[str, Any]:
        """The last round's metrics (from ``summary.json`` once the run has finished)."""
        final = self.summary.get("final", self.rows[-1] if self.rows else {})
        return dict(final)


class RunControl:
    """What callbacks see of the running loop, and how they stop it.

    As Keras' ``model.stop_training``: a callback calls :meth:`stop` from any hook, and
    the loop ends before the next round starts (a stop from ``on_round_begin`` keeps
    that round from starting); the model of the last finished round is final.

    Attributes:
        rounds: The rounds the run was asked for.
        server_round: The round running, or the last one finished (0 before round 1).
        params: The global model's weights after the last committed round.
        stop_training: Set by :meth:`stop`.
        stop_reason: Why, in one line (logged by the loop).
    """

    def __init__(self, rounds: int) -> None:
        self.rounds = rounds
        self.server_round = 0
        self.params: list[Any] = []
        self.stop_training = False
        self.stop_reason = ""

    def stop(self, reason: str) -> None:
        """Stop the run before its next round (the first reason given is kept)."""
        if not self.stop_training:
            self.stop_training, self.stop_reason = True, reason


class Callback:
    """Base class whose hooks do nothing; override the ones you need.

    Before the first round the loop calls :meth:`set_history`, so every callback can
    read past rounds from ``self.history`` instead of keeping its own copy, and
    :meth:`set_run`, so it can see the run and stop it (``self.run.stop(reason)``).
    """

    history: History | None = None
    run: RunControl | None = None

    def set_history(self, history: History) -> None:
        """Called once before :meth:`on_run_begin` with the run's row store."""
        self.history = history

    def set_run(self, run: RunControl) -> None:
        """Called once before :meth:`on_run_begin` with the loop's :class:`RunControl`."""
        self.run = run

    def on_run_begin(self, logs: Logs) -> None:
        """Called once before the first round (``logs`` has run-level facts)."""

    def on_round_begin(self, server_round: int) -> None:
        """Called before clients are sampled for ``server_round``."""

    def on_round_end(self, server_round: int, logs: Logs) -> None:
        """Called after aggregation and evaluation of ``server_round``."""

    def on_failures(
        self,
        server_round: int,
        failures: Sequence[ClientFailure],
        recoveries: Sequence[HostRecovery],
    ) -> None:
        """Called after a round's clients ran, when some failed or were re-run."""

    def on_run_end(self, logs: Logs) -> None:
        """Called once after the last round with the final logs."""


class CallbackList(Callback):
    """Fans every hook out to a list of callbacks, in order."""

    def __init__(self, callbacks: Iterable[Callback] = ()) -> None:
        self.callbacks = list(callbacks)

    def set_history(self, history: History) -> None:
        """Forward to every callback."""
        self.history = history
        for cb in self.callbacks:
            cb.set_history(history)

    def set_run(self, run: RunControl) -> None:
        """Forward to every callback."""
        self.run = run
        for cb in self.callbacks:
            cb.set_run(run)

    def on_run_begin(self, logs: Logs) -> None:
        """Forward to every callback."""
        for cb in self.callbacks:
            cb.on_run_begin(logs)

    def on_round_begin(self, server_round: int) -> None:
        """Forward to every callback, until one stops the run (the round then never runs)."""
        for cb in self.callbacks:
            if self.run is not None and self.run.stop_training:
                return
            cb.on_round_begin(server_round)

    def on_round_end(self, server_round: int, logs: Logs) -> None:
        """Forward to every callback."""
        for cb in self.callbacks:
            cb.on_round_end(server_round, logs)

    def on_failures(
        self,
        server_round: int,
        failures: Sequence[ClientFailure],
        recoveries: Sequence[HostRecovery],
    ) -> None:
        """Forward to every callback."""
        for cb in self.callbacks:
            cb.on_failures(server_round, failures, recoveries)

    def on_run_end(self, logs: Logs) -> None:
        """Forward to every callback."""
        for cb in self.callbacks:
            cb.on_run_end(logs)


class FailureLog(Callback):
    """Writes ``failures.csv``: one row per failed client and per host re-execution.

    Columns: ``round, attempt, client, host, cause, error`` (the error's first line).
    A host that died under its clients, who were then run again, is one row with
    ``cause = "host_restart"``, no client, and the re-run clients in ``error``. A
    resumed run first drops the rows of rounds after its checkpoint, which it runs
    again.
    """

    COLUMNS = ("round", "attempt", "client", "host", "cause", "error")

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_run_begin(self, logs: Logs) -> None:
        """Start the file, keeping only rows of rounds the history already holds."""
        import csv

        done = self.history.rows[-1]["round"] if self.history and self.history.rows else 0
        kept: list[dict[str, str]] = []
        if done and self.path.exists():
            with self.path.open(newline="") as f:
                kept = [r for r in csv.DictReader(f) if int(r["round"]) <= done]
        with self.path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.COLUMNS)
            writer.writeheader()
            writer.writerows(kept)

    def on_failures(
        self,
        server_round: int,
        failures: Sequence[ClientFailure],
        recoveries: Sequence[HostRecovery],
    ) -> None:
        """Append this round's rows."""
        import csv

        rows = [
            (
                server_round,
                r.attempt,
                "",
                r.host,
                "host_restart",
                f"{r.reason}; re-ran clients {list(r.client_ids)}",
            )
            for r in recoveries
        ] + [
            (server_round, f.attempt, f.client_id, f.host, f.cause, f.reason.partition("\n")[0])
            for f in failures
        ]
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerows(rows)


class CSVLogger(Callback):
    """Writes ``metrics.csv``: one row per round, rewritten after every round.

    Rewriting keeps the file valid after a crash and lets new columns appear in
    later rounds (e.g. federated evaluation every few rounds); a round missing a
    column leaves its cell empty. It uses the ``csv`` module, so the driver does not
    hold pandas (~60 MB) during the run. With ``parquet``, the end of the run also
    writes the table as ``metrics.parquet`` next to it (:meth:`write_parquet`).
    The rows are the run's :class:`History` (set by the loop), never a copy.
    """

    def __init__(self, path: str | Path, *, parquet: bool = True) -> None:
        self.path = Path(path)
        self.parquet = parquet

    @property
    def rows(self) -> list[Logs]:
        """The history's rows (none before the loop has set the history)."""
        return self.history.rows if self.history is not None else []

    def on_round_end(self, server_round: int, logs: Logs) -> None:
        """Rewrite the CSV atomically from the history, which holds this round already."""
        import csv

        columns = list(dict.fromkeys(k for row in self.rows for k in row))
        tmp = self.path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows(self.rows)
        tmp.replace(self.path)

    def on_run_end(self, logs: Logs) -> None:
        """Write the Parquet copy (when ``parquet``)."""
        if self.parquet:
            self.write_parquet()

    def write_parquet(self) -> None:
        """The rows so far as ``metrics.parquet`` (pandas + pyarrow)."""
        if self.rows:
            import pandas as pd

            pd.DataFrame(self.rows).to_parquet(self.path.with_suffix(".parquet"), index=False)


class TensorBoardLogger(Callback):
    """Writes every numeric log value as a TensorBoard scalar per round (``tensorboard --logdir``).

    Uses tensorboardX, which writes event files without importing TensorFlow.
    """

    def __init__(self, log_dir: str | Path) -> None:
        self.log_dir = Path(log_dir)
        self._writer: Any = None

    def on_run_begin(self, logs: Logs) -> None:
        """Open the event file."""
        from tensorboardX import SummaryWriter

        self._writer = SummaryWriter(logdir=str(self.log_dir))

    def on_round_end(self, server_round: int, logs: Logs) -> None:
        """One scalar per numeric key, at step ``server_round``."""
        if self._writer is None:
            self.on_run_begin({})
        for key, value in logs.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(key, float(value), server_round)
        self._writer.flush()

    def on_run_end(self, logs: Logs) -> None:
        """Close the event file."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _fmt(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.4g}"
    return str(value)


class ProgressBar(Callback):
    """A rich progress bar over rounds showing the latest loss and metrics.

    Off a terminal (a job, CI, a pipe; rich's ``Console.is_terminal``, Jupyter aside) a bar
    would be drawn once, at the end, cut to 80 columns; there it prints one plain,
    unwrapped line per round instead (``round 3/10  0:00:02  fit/loss=1.02 ...``).

    Args:
        total_rounds: Number of rounds in the run.
        keys: Log keys to show next to the bar, when present.
    """

    def __init__(self, total_rounds: int, keys: Sequence[str] = ("fit/loss", "eval/loss")) -> None:
        self.total_rounds = total_rounds
        self.keys = list(keys)
        self._progress: Any = None
        self._task: Any = None
        self._lines: Any = None  # the console of the plain lines, off a terminal
        self._start = 0.0

    def on_run_begin(self, logs: Logs) -> None:
        """Start the bar (or, off a terminal, the clock of the plain lines)."""
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        console = Console()
        if not (console.is_terminal or console.is_jupyter):
            self._lines, self._start = console, time.monotonic()
            return
        self._progress = Progress(
            TextColumn("round"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[stats]}"),
            transient=False,
        )
        self._task = self._progress.add_task("rounds", total=self.total_rounds, stats="")
        self._progress.start()

    def on_round_end(self, server_round: int, logs: Logs) -> None:
        """Advance and show the latest values."""
        stats = "  ".join(f"{k}={_fmt(logs[k])}" for k in self.keys if k in logs)
        if self._lines is not None:
            elapsed = datetime.timedelta(seconds=int(time.monotonic() - self._start))
            line = f"round {server_round}/{self.total_rounds}  {elapsed}  {stats}"
            self._lines.print(line, soft_wrap=True, markup=False, highlight=False)
        if self._progress is not None:
            self._progress.update(self._task, completed=server_round, stats=stats)

    def on_run_end(self, logs: Logs) -> None:
        """Stop the bar."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        self._lines = None


class LoggingCallback(Callback):
    """Logs one INFO line per round (useful where no terminal shows a bar)."""

    def __init__(self, keys: Sequence[str] = ("fit/loss", "eval/loss")) -> None:
        self.keys = list(keys)

    def on_round_end(self, server_round: int, logs: Logs) -> None:
        """Log the round's headline numbers."""
        stats = " ".join(f"{k}={_fmt(logs[k])}" for k in self.keys if k in logs)
        logger.info("round %d: %s", server_round, stats)


class PrivacyBudget(Callback):
    """Stops the run before a round that would take the ledger past its budget.

    The ledger's ``allows_next_round`` prices one more round at ``max_epsilon`` (or a
    ``target_epsilon``); the loop adds this callback itself whenever it has a ledger.
    """

    def __init__(self, ledger: Any) -> None:
        self.ledger = ledger

    def on_round_begin(self, server_round: int) -> None:
        """Stop before ``server_round`` when it would exceed the budget."""
        if self.run is not None and not self.ledger.allows_next_round():
            self.run.stop(
                f"stopping before round {server_round}: it would exceed the privacy budget "
                f"(privacy.dp.max_epsilon, or the target_epsilon the noise was calibrated for); "
                f"the model of round {server_round - 1} is final"
            )


class EarlyStopping(Callback):
    """Stops when ``monitor`` has not improved by ``min_delta`` for ``patience`` rounds.

    Rounds where ``monitor`` is not logged (evaluation every k rounds) neither count nor
    reset the patience.

    >>> stop = EarlyStopping("eval/loss", patience=2)
    >>> run = RunControl(10)
    >>> stop.set_run(run)
    >>> for r, loss in enumerate([3.0, 2.0, 2.5, 2.1], start=1):
    ...     stop.on_round_end(r, {"eval/loss": loss})
    >>> run.stop_training, run.stop_reason
    (True, 'eval/loss has not improved on 2 for 2 rounds (early stopping)')

    Args:
        monitor: The log key to watch, e.g. ``eval/loss`` or ``eval/accuracy``.
        patience: Rounds without improvement before stopping.
        min_delta: The smallest change that counts as an improvement.
        mode: ``min``, ``max``, or ``auto`` (``max`` for accuracy-like keys).
    """

    def __init__(
        self,
        monitor: str = "eval/loss",
        *,
        patience: int = 3,
        min_delta: float = 0.0,
        mode: str = "auto",
    ) -> None:
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        if mode not in ("min", "max", "auto"):
            raise ValueError(f"mode must be 'min', 'max' or 'auto', got {mode!r}")
        if mode == "auto":
            mode = "max" if any(w in monitor for w in ("accuracy", "auc", "precision")) else "min"
        self.monitor, self.patience, self.min_delta, self.mode = monitor, patience, min_delta, mode
        self.best: float | None = None
        self.waited = 0

    def on_round_end(self, server_round: int, logs: Logs) -> None:
        """Compare the round's value with the best so far."""
        value = logs.get(self.monitor)
        if not isinstance(value, (int, float)) or math.isnan(value):
            return
        better = self.best is None or (
            value < self.best - self.min_delta
            if self.mode == "min"
            else value > self.best + self.min_delta
        )
        if better:
            self.best, self.waited = float(value), 0
            return
        self.waited += 1
        if self.waited >= self.patience and self.run is not None:
            self.run.stop(
                f"{self.monitor} has not improved on {self.best:.4g} for {self.waited} "
                "rounds (early stopping)"
            )


class TimeLimit(Callback):
    """Stops the run before a round that would start after ``seconds`` of rounds.

    >>> limit = TimeLimit(0.0)
    >>> run = RunControl(5)
    >>> limit.set_run(run)
    >>> limit.on_run_begin({})
    >>> limit.on_round_begin(2)
    >>> run.stop_reason
    'stopping before round 2: the time limit of 0 s is used up'
    """

    def __init__(self, seconds: float) -> None:
        if not seconds >= 0:
            raise ValueError(f"seconds must be >= 0, got {seconds}")
        self.seconds = seconds
        self._start = 0.0

    def on_run_begin(self, logs: Logs) -> None:
        """Start the clock."""
        self._start = time.monotonic()

    def on_round_begin(self, server_round: int) -> None:
        """Stop when the time is up (round 1 always runs)."""
        used = time.monotonic() - self._start
        if server_round > 1 and used >= self.seconds and self.run is not None:
            self.run.stop(
                f"stopping before round {server_round}: the time limit of {self.seconds:g} s "
                "is used up"
            )
