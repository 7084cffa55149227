"""Sweeps on Ray Tune: each trial is a whole federated run inside its own placement group.

:func:`run_sweep` starts (or joins) Ray and runs one Tune trial per
:class:`~fedray.sweeps.Trial`. A trial reserves, through a ``PlacementGroupFactory``,
one small bundle for its driver (the Tune function that calls :func:`fedray.api.run`)
and one bundle per host of its run; the run's :class:`RayExecutor` then places each
host in its own bundle (:func:`fedray.runtime.ray_host.current_trial`), so concurrent
trials never take each other's CPUs. With ``runtime.executor=local`` a trial is one
bundle of its CPUs.

Trials write ordinary run directories and checkpoint every ``checkpoint.every`` rounds;
a restored Tune experiment (the same command again) restarts the unfinished trials,
which resume from those checkpoints, and leaves the finished ones alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fedray import config as config_mod
from fedray.callbacks import Callback, Logs
from fedray.config import Config
from fedray.errors import FedrayError, one_line
from fedray.loop.checkpoint import FILENAME
from fedray.runtime.plan import clients_per_host, group_clients
from fedray.runtime.warm import ENV
from fedray.sweeps import ERROR_FILE, SweepPlan, pick_metric, run_dir

logger = logging.getLogger(__name__)

DRIVER_CPU = 0.01
"""The bundle of a trial's driver: it aggregates, but its hosts do the training."""


def trial_bundles(cfg: Config, cpus: float) -> list[dict[str, float]]:
    """A trial's placement group for ``cpus`` CPUs: its driver's bundle, then one per host.

    >>> from fedray import config
    >>> trial_bundles(config.load({"data": {"num_clients": 4}}), 2.0)
    [{'CPU': 0.01}, {'CPU': 0.995}, {'CPU': 0.995}]
    >>> trial_bundles(config.load({"runtime": {"executor": "local"}}), 1.0)
    [{'CPU': 1.0}]
    """
    if cfg.runtime.executor == "local":
        return [{"CPU": cpus}]
    rt = cfg.runtime
    per_host = clients_per_host(rt.clients_per_actor, cfg.data.num_clients, cpus)
    hosts = len(group_clients(cfg.data.num_clients, per_host))
    bundle = {"CPU": round((cpus - DRIVER_CPU) / hosts, 6)}
    if isinstance(rt.gpus_per_host, float):  # `auto` is refused for sweeps (sweeps.plan)
        bundle["GPU"] = rt.gpus_per_host
    return [{"CPU": DRIVER_CPU}] + [dict(bundle) for _ in range(hosts)]


class _Report(Callback):
    """Reports each round to Tune: the round and the sweep's metric."""

    def __init__(self, metric: str | None, rounds: int) -> None:
        self.metric, self.rounds = metric, rounds

    def on_round_end(self, server_round: int, logs: Logs) -> None:
        from ray import tune

        value = logs.get(pick_metric(logs, self.metric, None)[0])  # the table's metric
        result: dict[str, float] = {"round": server_round, "rounds": self.rounds}
        if isinstance(value, (int, float)):
            result["value"] = float(value)
        tune.report(result)


def _trial(params: dict[str, Any], *, sweep_dir: str, config: dict[str, Any]) -> None:
    """One trial: the sweep's config plus this trial's overrides, as an ordinary run."""
    import json

    from fedray.api import run

    os.environ.pop(ENV, None)  # a trial's hosts are its own, never warm ones
    trial = params["trial"]
    out = run_dir(sweep_dir, trial["name"])
    cfg = config_mod.load(config, trial["overrides"])
    summary = out / "summary.json"
    if summary.is_file() and json.loads(summary.read_text())["final"].get("round") == cfg.rounds:
        return  # finished before the sweep was interrupted: keep it as it is
    metric = SweepPlan.load(sweep_dir).metric
    error = out / ERROR_FILE
    error.unlink(missing_ok=True)  # a resumed trial: last time's error is history
    try:
        run(
            config,
            out=out,
            overrides=[*trial["overrides"], "runtime.progress=false"],
            callbacks=[_Report(metric, cfg.rounds)],
            resume=(out / FILENAME).is_file(),
        )
    except Exception as exc:  # the table says why, in one line; Tune marks it ERROR
        out.mkdir(parents=True, exist_ok=True)
        error.write_text(str(exc) if isinstance(exc, FedrayError) else one_line(exc))
        raise


def run_sweep(
    out: Path,
    sweep: SweepPlan,
    *,
    max_concurrent: int | None = None,
    address: str | None = None,
    progress: bool = False,
) -> dict[str, str]:
    """Run (or resume) the sweep's trials on Ray Tune; their final states by name.

    Raises:
        FedrayError: No Ray cluster at ``address``, or too few CPUs for one trial.
    """
    os.environ["RAY_CHDIR_TO_TRIAL_DIR"] = "0"  # trials read the config's relative paths
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # fedray logs its own
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    from ray import tune

    from fedray.runtime.connect import CONNECT_TIMEOUT_S, connect, shutdown
    from fedray.sweeps.tune_view import SweepView

    timeout_s = sweep.config.get("runtime", {}).get("connect_timeout_s", CONNECT_TIMEOUT_S)
    started = connect(address, num_cpus=None, verbose=False, timeout_s=timeout_s)
    try:
        import ray

        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        k = min(max_concurrent or max(1, int(cpus)), len(sweep.trials))
        share = cpus / k
        base = sweep.config

        def resources(params: dict[str, Any]) -> Any:
            cfg = config_mod.load(base, params["trial"]["overrides"])
            return tune.PlacementGroupFactory(trial_bundles(cfg, share))

        trainable = tune.with_resources(
            tune.with_parameters(_trial, sweep_dir=str(out), config=base), resources
        )
        labels = {t.name: ", ".join(f"{k}={v}" for k, v in t.values.items()) for t in sweep.trials}
        view = SweepView(labels, live=progress)
        tune_dir = out / "tune"
        if tune.Tuner.can_restore(str(tune_dir)):
            logger.info("resuming the sweep in %s", out)
            tuner = tune.Tuner.restore(  # a failed trial runs again: its cause may be fixed
                str(tune_dir), trainable, resume_unfinished=True, resume_errored=True
            )
        else:
            tuner = tune.Tuner(
                trainable,
                param_space={"trial": tune.grid_search([asdict(t) for t in sweep.trials])},
                tune_config=tune.TuneConfig(
                    max_concurrent_trials=k,
                    trial_name_creator=_name,
                    trial_dirname_creator=_name,
                ),
                run_config=tune.RunConfig(
                    name="tune", storage_path=str(out), verbose=0, callbacks=[view]
                ),
            )
        logger.info("%d trials, %d at a time (%.2g CPUs each)", len(sweep.trials), k, share)
        with _quiet_tune():  # a failed trial is one row with its reason, not a traceback
            results = tuner.fit()
        return {
            r.config["trial"]["name"]: ("ERROR" if r.error else "TERMINATED")
            for r in results
            if r.config
        }
    finally:
        if started:
            shutdown()


@contextlib.contextmanager
def _quiet_tune() -> Iterator[None]:
    """Tune's own logs (a failed trial's traceback, "Trials did not complete") to debug."""
    loggers = [logging.getLogger(n) for n in ("ray.tune", "ray.train", "ray.air")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _name(trial: Any) -> str:
    return str(trial.config["trial"]["name"])
