"""``fedray.run``: build everything from a config, train, and write the outputs.

Outputs in the run directory:

* ``metrics.csv`` (and ``metrics.parquet``): one row per round;
* ``tb/``: TensorBoard scalars of every logged value, per round;
* ``summary.json``: the resolved config, the final metrics and timings;
* ``model.keras``: the final global model (``keras.saving.load_model``).
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from fedray import config as config_mod
from fedray import rundirs
from fedray.aggregators.base import LinearAggregator, chain
from fedray.callbacks import (
    Callback,
    CallbackList,
    CSVLogger,
    FailureLog,
    History,
    LoggingCallback,
    ProgressBar,
    TensorBoardLogger,
)
from fedray.client import state_store
from fedray.client.devices import import_keras
from fedray.client.models import check_fit_model
from fedray.config import Config, build
from fedray.data.arrays import InMemory, from_clients
from fedray.errors import ConfigError, FedrayError, RoundFailedError
from fedray.loop import Checkpointer, Evaluation, default_scheduler, run_rounds
from fedray.loop import checkpoint as checkpoint_mod
from fedray.privacy import journal
from fedray.records import Params, RoundPolicy
from fedray.strategy import Strategy

logger = logging.getLogger(__name__)


class RunHistory(History):
    """What :func:`run` and :func:`fit` return: the run's :class:`~fedray.callbacks.History`.

    The loop recorded every round in it; the run then filled in ``out_dir``,
    ``summary`` and ``params``, and :meth:`model` loads the saved model.
    """

    def model(self) -> Any:
        """Load the final global model with Keras."""
        keras = import_keras()  # TensorFlow's start-up lines hidden

        if self.out_dir is None:
            raise ValueError("this history has no run directory (its run has not finished)")
        return keras.saving.load_model(self.out_dir / "model.keras")


def _default_out(cfg_source: Any) -> Path:
    stem = Path(str(cfg_source)).stem if isinstance(cfg_source, (str, Path)) else "run"
    return Path("runs") / f"{stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _out_dir(config: Any, out: str | Path | None) -> Path:
    if out is not None:
        return Path(out)
    if isinstance(config, (str, Path)):
        return _default_out(config)
    return rundirs.temporary()


def _callbacks(
    cfg: Config, out_dir: Path, extra: Iterable[Callback]
) -> tuple[CSVLogger, CallbackList]:
    """The CSV log, TensorBoard, the progress display and ``extra``."""
    keys = ["fit/loss", "eval/loss", "eval/accuracy", "eval/mae", "privacy/epsilon"]
    ui: Callback = (
        ProgressBar(cfg.rounds, keys=keys) if cfg.runtime.progress else LoggingCallback(keys)
    )
    csv_log = CSVLogger(out_dir / "metrics.csv", parquet=False)  # written after close
    failures = FailureLog(out_dir / "failures.csv")
    cb = CallbackList([csv_log, failures, TensorBoardLogger(out_dir / "tb"), ui, *extra])
    return csv_log, cb


@dataclass(frozen=True)
class _Parts:
    """What a run is made of once its hosts are up."""

    cfg: Config
    strategy: Strategy
    executor: Any
    ledger: Any  # the journaled privacy ledger, or None
    canaries: Any  # the canary audit, or None
    params0: Params | None  # the initial weights, when something needs them


def _parts(cfg: Config, strategy: Strategy, executor: Any, out_dir: Path, state: Any) -> _Parts:
    """The ledger (journaled in ``out_dir``), the canaries and the checks they need."""
    # A link that must see the model's size before the run (secure aggregation's
    # quantization range) says so with an optional check_model(dim).
    checks = [c for link in chain(strategy.aggregator) if (c := getattr(link, "check_model", None))]
    params0 = executor.initial_params() if checks or cfg.privacy.canaries.count else None
    dim = None if params0 is None else int(sum(np.size(p) for p in params0))
    for check in checks if dim is not None else ():
        try:
            check(dim)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    ledger = build.ledger(cfg, strategy, executor, dim)
    if ledger is not None:  # every charge durable before its release
        after = None if state is None else state.server_round
        ledger = journal.Journaled.open(ledger, out_dir / journal.FILENAME, resumed_after=after)
    return _Parts(cfg, strategy, executor, ledger, build.canary_audit(cfg), params0)


def _train(
    parts: _Parts,
    callback: Callback,
    history: History,
    state: Any,
    save: Callable[[Any], object],
) -> Params:
    """Run the server steps: buffered (FedBuff) or synchronous rounds, one loop."""
    cfg = parts.cfg
    dp, ev, st = cfg.privacy.dp, cfg.evaluation, cfg.strategy
    policy = RoundPolicy(
        over_commit=st.over_commit,
        on_too_few=st.on_too_few,
        max_retries=st.max_retries,
        max_update_norm=st.max_update_norm,
    )
    return run_rounds(
        strategy=parts.strategy,
        executor=parts.executor,
        rounds=cfg.rounds,
        seed=cfg.seed,
        callback=callback,
        history=history,
        scheduler=default_scheduler(parts.strategy, policy),
        evaluation=Evaluation(ev.every, ev.federated_every, ev.train_every),
        checkpoint=Checkpointer(save, cfg.checkpoint.every),
        resume=state,
        privacy=parts.ledger,
        noise_seed=dp.noise_seed if dp is not None else None,
        canaries=parts.canaries,
    )


_HOST_FACTS = (
    "clients",
    "pid",
    "node_id",
    "setup_s",
    "gpu_ids",
    "gpu",
    "gpu_memory_mb",
    "gpu_memory",
    "gpu_total_mb",
    "data_device",
    "gpu_data_mb",
)


def weighting(strategy: Strategy) -> str | None:
    """How the run's mean weights clients: ``"examples"``, ``"uniform"``, or None (no mean).

    >>> from fedray.strategy import fedavg
    >>> weighting(fedavg()), weighting(fedavg(weighting="uniform"))
    ('examples', 'uniform')
    """
    linear = [a for a in chain(strategy.aggregator) if isinstance(a, LinearAggregator)]
    return linear[0].weighs_by() if linear else None


def _summary(
    parts: _Parts,
    rows: list[dict[str, Any]],
    params: Params,
    host_info: list[dict[str, Any]],
    predictions: Any,
    times: dict[str, float],
) -> dict[str, Any]:
    """The contents of ``summary.json``."""
    cfg, strategy, ledger, canaries = parts.cfg, parts.strategy, parts.ledger, parts.canaries
    dp = cfg.privacy.dp
    round_times = [r["time/round_s"] for r in rows]
    return {
        "config": cfg.to_dict(),
        "strategy": strategy.name,
        "weighting": weighting(strategy),
        "final": rows[-1] if rows else {},
        "predictions": predictions,
        "time": {
            **times,
            "round_s_median": statistics.median(round_times) if round_times else None,
        },
        "params": {"count": int(sum(np.size(p) for p in params)), "arrays": len(params)},
        "privacy": (
            {
                **ledger.report(),
                "max_epsilon": dp.max_epsilon if dp is not None else None,
                "stopped_early": len(rows) < cfg.rounds,
            }
            if ledger is not None
            else None
        ),
        "canaries": (
            canaries.estimate(parts.params0, params, delta=dp.delta if dp and dp.delta else 1e-5)
            if canaries is not None and parts.params0 is not None
            else None
        ),
        "hosts": [{k: info[k] for k in _HOST_FACTS if k in info} for info in host_info],
    }


def _with_state_dir(cfg: Config, out_dir: Path) -> Config:
    """``cfg`` whose hosts keep their clients' state outside the run directory.

    By default in ``$FEDRAY_CLIENT_STATE_DIR`` (else ``~/.cache/fedray/client-state``),
    under a name derived from the run directory's absolute path, so a resume finds it:
    the clients' state (top-k's raw residuals) never sits beside the run's outputs.
    """
    if cfg.runtime.client_state_dir is not None:
        return cfg
    folder = str(state_store.default_root() / state_store.name_for(out_dir))
    return cfg.model_copy(
        update={"runtime": cfg.runtime.model_copy(update={"client_state_dir": folder})}
    )


@rundirs.removed_on_failure
def run(
    config: str | Path | Mapping[str, Any] | Config,
    *,
    strategy: Strategy | None = None,
    out: str | Path | None = None,
    overrides: Iterable[str] = (),
    callbacks: Iterable[Callback] = (),
    resume: bool = False,
    data: InMemory | None = None,
) -> RunHistory:
    """Train a federated model as described by ``config``.

    Args:
        config: A YAML path, a nested dict or a :class:`~fedray.config.Config`.
        strategy: A hand-composed :class:`~fedray.strategy.Strategy` to use instead of
            the recipe ``strategy.name`` (its sampling replaces ``strategy.fraction_fit``
            and ``min_fit_clients``); ``privacy.*`` still wraps it, and it is refused, in
            one line, where it cannot combine with them.
        out: Output directory; defaults to ``runs/<config-name>-<timestamp>`` for a
            config file, else to a temporary directory that is removed when the
            returned history is garbage-collected or at exit (and gets no checkpoint
            unless ``checkpoint.every`` is set). A run that fails removes the directory
            it made unless it holds a checkpoint, the privacy journal or failed clients'
            rows (:func:`fedray.rundirs.kept_for`).
        overrides: ``dotted.key=value`` strings applied on top of ``config``.
        callbacks: Extra :class:`~fedray.callbacks.Callback` objects.
        resume: Continue the run in ``out`` from its last checkpoint; the finished run
            equals an uninterrupted one bit for bit (only ``rounds`` and ``runtime.*``
            may differ from the original config).
        data: The clients' arrays, with ``data.dataset: memory`` (see :func:`fit`).

    Returns:
        A :class:`RunHistory` with per-round metrics, the summary and final weights.

    Raises:
        fedray.errors.ConfigError: The config is invalid.
        fedray.errors.FedrayError: Data or cluster problems, described in one line.
    """
    t_start = time.perf_counter()
    strategy, callbacks = build.run_arguments(strategy, callbacks)
    cfg = config_mod.load(config, overrides)
    if strategy is not None:
        cfg = build.with_config(cfg, strategy)
    build.check_inputs(cfg)
    fp = checkpoint_mod.fingerprint(cfg.to_dict())
    state = None
    if resume:
        if out is None:
            raise FedrayError("--resume needs the run directory (--out DIR) to continue")
        state = checkpoint_mod.load(out, config_fingerprint=fp)
        logger.info("resuming after round %d from %s", state.server_round, out)
    out_dir = _out_dir(config, out)
    rundirs.make(out_dir)
    cfg = build.scratch(cfg) if rundirs.is_temporary() else cfg
    privacy_state = None
    if state is not None and "privacy" in state.loop_state:  # the journal is the truth
        entries = journal.read(out_dir / journal.FILENAME)
        spent = journal.replay(entries).state() if entries else state.loop_state["privacy"]
        privacy_state = {**spent, "server_round": state.server_round}
    cfg = _with_state_dir(cfg, out_dir)
    composed = build.build_strategy(cfg, privacy_state, strategy=strategy)
    if composed.dp_mechanisms():
        build.warn_on_delta(cfg)
    executor, started_ray = build.make_executor(cfg, composed, data)
    try:
        build.check_predict(cfg, executor)
        parts = _parts(cfg, composed, executor, out_dir, state)
        startup_s = time.perf_counter() - t_start
        logger.info("started in %.1f s; %d clients", startup_s, executor.num_clients)
        history = RunHistory()  # the one row store; a resumed run's starts with its checkpoint's
        csv_log, cb = _callbacks(cfg, out_dir, callbacks)
        save = lambda st: checkpoint_mod.save(out_dir, st, config_fingerprint=fp)  # noqa: E731
        t_rounds = time.perf_counter()
        try:
            params = _train(parts, cb, history, state, save)
        except RoundFailedError as exc:  # short, and where to look and how to go on
            raise RoundFailedError(f"{exc}. {rundirs.next_step(out_dir)}", step=exc.step) from None
        t_end = time.perf_counter()
        (out_dir / "model.keras").write_bytes(executor.export(params))
        predictions = None
        if cfg.evaluation.predict:
            predictions = {
                "inputs": cfg.evaluation.predict,
                "outputs": executor.predict(params, cfg.evaluation.predict),
            }
    finally:
        host_info = list(getattr(executor, "host_info", []))
        executor.close()
        if started_ray:
            from fedray.runtime.connect import shutdown

            shutdown()
    csv_log.write_parquet()  # pandas only now, with the hosts gone (peak memory)
    total_s = time.perf_counter() - t_start
    times = {"startup_s": startup_s, "rounds_s": t_end - t_rounds, "total_s": total_s}
    summary = _summary(parts, history.rows, params, host_info, predictions, times)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    history.out_dir, history.summary, history.params = out_dir, summary, params
    return history


def fit(  # noqa: PLR0913 - the public call, keyword-only options as keras.Model.fit
    model_fn: Callable[[], Any],
    clients: Any,
    *,
    rounds: int,
    strategy: Strategy | Mapping[str, Any] | None = None,
    test: Any = None,
    client_column: str | None = None,
    label: str = "label",
    out: str | Path | None = None,
    callbacks: Iterable[Callback] = (),
    **settings: Any,
) -> RunHistory:
    """Train ``model_fn``'s model federatedly on clients' data already in memory.

    Example::

        history = fedray.fit(create_model, [(x[:50], y[:50]), (x[50:], y[50:])],
                             rounds=10, strategy=fedray.strategy.fedavg(weighting="uniform"))
        history.model().predict(np.array([[0.0], [10.0]]))

    Args:
        model_fn: Builds the Keras model with no arguments; an uncompiled one is
            compiled with ``client.*`` (optimizer, learning rate, loss, metrics).
            Checked before any host starts (:func:`fedray.client.models.check_fit_model`): a
            built model instead of a function, a function that needs arguments, raises
            or returns no model, or a model that cannot take the clients' inputs or
            whose outputs do not match their labels is refused in one line.
        clients: One entry per client: an ``(x, y)`` pair of arrays or a
            ``tf.data.Dataset`` of ``(x, y)``; or one DataFrame with ``client_column``
            (and ``label``, the target column).
        rounds: Server rounds.
        strategy: A :class:`~fedray.strategy.Strategy`, or the config's ``strategy``
            section as a dict (``{"name": "fedprox", "proximal_mu": 0.1}``); default
            FedAvg.
        test: The server's test set, ``(x, y)``: ``eval/*`` every round.
        client_column: With a DataFrame, the column naming each row's client.
        label: With a DataFrame, the target column.
        out: The run directory. By default a temporary one, like Keras' ``fit``
            leaving no files behind: removed when the returned history is
            garbage-collected or at exit (``history.out_dir`` says where it is while
            the history lives); pass ``out`` to keep the outputs.
        callbacks: Extra callbacks.
        **settings: Any config sections as keyword arguments, e.g.
            ``client={"batch_size": 32}``, ``runtime={"executor": "local"}``, ``seed=1``.

    Returns:
        The same :class:`RunHistory` as :func:`run`.

    Raises:
        fedray.errors.ConfigError: A setting or ``model_fn`` is wrong (one line).
        fedray.errors.DataError: ``clients`` or ``test`` cannot be read (one line).
    """
    if isinstance(strategy, Mapping):  # the config's section, as for every other one
        settings, strategy = {**settings, "strategy": strategy}, None
    raw: dict[str, Any] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in settings.items()}
    raw["rounds"] = rounds
    cfg = config_mod.load(raw)  # validates every key before any array is read
    source = from_clients(
        clients,
        test=test,
        model_fn=model_fn,
        data=cfg.data,
        client_column=client_column,
        label=label,
    )
    check_fit_model(model_fn, source, cfg.client, in_process=cfg.runtime.executor == "local")
    data = {**raw.get("data", {}), "dataset": "memory", "num_clients": len(source.shards)}
    evaluation = {"every": 1 if test is not None else 0, **raw.get("evaluation", {})}
    cfg = config_mod.load({**raw, "data": data, "evaluation": evaluation})
    return run(cfg, strategy=strategy, out=out, callbacks=callbacks, data=source)
