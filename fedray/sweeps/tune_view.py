"""The sweep's progress view: one line per trial (state, round, metric), via rich.

A Ray Tune callback on the sweep's driver. With ``live`` it redraws a rich table in
the terminal; without, it logs one line whenever a trial starts, finishes or fails.
"""

from __future__ import annotations

import logging
from typing import Any

from ray import tune

logger = logging.getLogger("fedray.sweep")


class SweepView(tune.Callback):  # type: ignore[misc]
    """Tracks every trial's state, round and latest metric; shows them as they change.

    Args:
        labels: Each trial's name and its values (``lr=0.01, seed=0``), in plan order.
        live: Redraw a rich table (a terminal), else log lines.
    """

    def __init__(self, labels: dict[str, str], live: bool = False) -> None:
        self.labels = dict(labels)
        self.rows: dict[str, dict[str, Any]] = {
            n: {"state": "PENDING", "round": 0, "rounds": None, "value": None} for n in labels
        }
        self.live = live
        self._live: Any = None

    def __getstate__(self) -> dict[str, Any]:  # Tune saves its callbacks with the experiment
        return {**self.__dict__, "_live": None}

    def render(self) -> Any:
        """The rich table of the trials."""
        from rich.table import Table

        t = Table(title="fedray sweep", show_lines=False)
        for col in ("trial", "values", "state", "round", "metric"):
            t.add_column(col, justify="right" if col in ("round", "metric") else "left")
        for name, r in self.rows.items():
            rounds = f"{r['round']}/{r['rounds']}" if r["rounds"] else str(r["round"])
            value = "" if r["value"] is None else f"{r['value']:.4g}"
            t.add_row(name, self.labels.get(name, ""), r["state"], rounds, value)
        return t

    def _update(self, trial: Any, state: str, result: dict[str, Any] | None = None) -> None:
        name = str(trial.config["trial"]["name"])
        row = self.rows.setdefault(
            name, {"state": state, "round": 0, "rounds": None, "value": None}
        )
        changed = row["state"] != state
        row["state"] = state
        if result:
            row["round"] = result.get("round", row["round"])
            row["rounds"] = result.get("rounds", row["rounds"])
            row["value"] = result.get("value", row["value"])
        if self.live:
            if self._live is None:
                from rich.live import Live

                self._live = Live(self.render(), refresh_per_second=4, transient=False)
                self._live.start()
            self._live.update(self.render())
        elif changed:
            value = "" if row["value"] is None else f", metric {row['value']:.4g}"
            logger.info("trial %s: %s (round %s%s)", name, state, row["round"], value)

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """A trial started (or restarted after a resume)."""
        self._update(trial, "RUNNING")

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        """A trial reported a round."""
        self._update(trial, "RUNNING", result)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """A trial's run finished."""
        self._update(trial, "TERMINATED")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """A trial's run failed (its run directory's failures.csv says why)."""
        self._update(trial, "ERROR")

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        """Stop redrawing."""
        if self._live is not None:
            self._live.update(self.render())
            self._live.stop()
            self._live = None
