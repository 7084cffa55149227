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
import math
import secrets
import statistics
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from fedray import checkpoint as checkpoint_mod
from fedray import config as config_mod
from fedray.aggregators import (
    AdaptiveClip,
    CentralDP,
    LocalDP,
    Mean,
    SecureAggregation,
    Summable,
)
from fedray.callbacks import (
    Callback,
    CallbackList,
    CSVLogger,
    LoggingCallback,
    ProgressBar,
    RoundRecorder,
    TensorBoardLogger,
)
from fedray.config import Config
from fedray.driver import run_rounds
from fedray.errors import ConfigError, FedrayError
from fedray.records import DPSGD, Params, RoundPolicy
from fedray.server_opt import ServerSGD
from fedray.strategy import STRATEGIES, Strategy, with_dp, with_norm_bound

logger = logging.getLogger(__name__)


@dataclass
class History:
    """The result of a run.

    Attributes:
        out_dir: Where ``metrics.csv``, ``summary.json`` and ``model.keras`` are.
        rows: One dict of logs per round.
        summary: The contents of ``summary.json``.
        params: The final global weights.
    """

    out_dir: Path
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    params: Params

    @property
    def metrics(self) -> Any:
        """Per-round metrics as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.rows)

    @property
    def final(self) -> dict[str, Any]:
        """The last round's metrics."""
        return dict(self.summary["final"])

    def model(self) -> Any:
        """Load the final global model with Keras."""
        import keras

        return keras.saving.load_model(self.out_dir / "model.keras")


def build_strategy(cfg: Config, privacy_state: Mapping[str, Any] | None = None) -> Strategy:
    """The strategy named by ``strategy.name``, with the options that recipe takes.

    ``privacy_state`` is the ledger of a resumed run: a ``target_epsilon`` run is then
    calibrated for the rounds still to come, on top of those already spent.
    """
    s = cfg.strategy
    kwargs: dict[str, Any] = {"fraction_fit": s.fraction_fit, "min_fit_clients": s.min_fit_clients}
    if s.name == "scaffold":
        kwargs["num_clients"] = cfg.data.num_clients
    if s.name == "fedbuff":
        kwargs.update(concurrency=s.concurrency, buffer_size=s.buffer_size)
    if s.name in ("fedavgm", "fedadagrad", "fedadam", "fedyogi", "scaffold", "fedbuff") and (
        s.server_learning_rate
    ):
        kwargs["server_learning_rate"] = s.server_learning_rate
    if s.name == "fedavgm":
        kwargs["server_momentum"] = s.server_momentum
    elif s.name in ("fedadagrad", "fedadam", "fedyogi"):
        kwargs.update(beta1=s.beta1, beta2=s.beta2, tau=s.tau)
    elif s.name == "fedprox":
        kwargs["mu"] = s.proximal_mu
    elif s.name == "trimmed_mean":
        kwargs["beta"] = s.trim_beta
    elif s.name in ("krum", "multi_krum"):
        kwargs["num_byzantine"] = s.num_byzantine
        if s.name == "multi_krum":
            kwargs["num_selected"] = s.krum_selected
    strategy = STRATEGIES[s.name](**kwargs)
    if s.name == "fedavg" and s.server_learning_rate:
        strategy = replace(strategy, server_optimizer=ServerSGD(s.server_learning_rate))
    private = cfg.privacy.dp is not None or cfg.privacy.secure_aggregation.enabled
    uniform = s.weighting == "uniform" or (s.weighting == "auto" and private)
    if uniform and isinstance(strategy.aggregator, Mean):
        strategy = replace(strategy, aggregator=Mean(weighting="uniform"))
    dp = cfg.privacy.dp
    if dp is not None and dp.mode == "dpsgd":  # example-level DP inside each client
        assert not isinstance(dp.clip, str)
        z = noise_multiplier(cfg, privacy_state)
        sgd = DPSGD(noise_multiplier=z, clip=dp.clip, noise_seed=dp.noise_seed)
        strategy = replace(strategy, client=replace(strategy.client, dp_sgd=sgd))
    elif dp is not None:
        strategy = with_dp(strategy, dp_mechanism(cfg, privacy_state), sampling=dp.sampling)
    sa = cfg.privacy.secure_aggregation
    if sa.enabled:
        inner = strategy.aggregator
        assert isinstance(inner, (Mean, CentralDP))
        if isinstance(inner, Mean):
            inner = Mean(weighting="uniform")
        clip = sa.clip
        if clip is None:  # DP's clip, or Flower's SecAgg+ clipping range
            clip = float(inner.clip) if isinstance(inner, CentralDP) else 8.0  # type: ignore[arg-type]
        degree = {"auto": None, "all": cfg.data.num_clients}.get(str(sa.neighbours))
        if isinstance(sa.neighbours, int):
            degree = sa.neighbours
        secure = SecureAggregation(
            inner=inner,
            clip=clip,
            bits=sa.bits,
            degree=degree,
            threshold=sa.threshold,
            min_clients=sa.min_clients,
        )
        strategy = replace(strategy, aggregator=secure)
    if s.norm_bound is not None:
        strategy = with_norm_bound(strategy, s.norm_bound)
    return strategy


def noise_multiplier(cfg: Config, privacy_state: Mapping[str, Any] | None = None) -> float:
    """``privacy.dp.noise_multiplier``, or the one calibrated for ``target_epsilon``.

    On resume (``privacy_state``, the ledger's checkpointed state) with the same
    ``rounds``, the z the run started with is reused, so the resumed run is the
    uninterrupted one. With more ``rounds``, the remaining rounds get the z that keeps
    the whole run, the spent rounds as they ran plus the new ones, within the target.
    """
    dp = cfg.privacy.dp
    if dp is None:
        raise ValueError("the config has no privacy.dp section")
    if dp.noise_multiplier is not None:
        return dp.noise_multiplier
    assert dp.target_epsilon is not None and dp.delta is not None  # checked by the config
    plan = (privacy_state or {}).get("plan")
    if plan and int(plan["rounds"]) == cfg.rounds:
        return float(plan["noise_multiplier"])
    from fedray.privacy.accounting import RoundEvent

    prior = [(RoundEvent.from_json(e), int(n)) for e, n in (privacy_state or {}).get("history", [])]
    # Server rounds completed (a ledger may have charged more attempts than rounds).
    spent = int((privacy_state or {}).get("server_round", sum(n for _, n in prior)))
    left = cfg.rounds - spent
    key = f"privacy.dp.target_epsilon = {dp.target_epsilon!r}"
    if privacy_state and left <= 0:
        raise ConfigError(f"rounds = {cfg.rounds}: the resumed run has spent {spent} rounds")
    if dp.mode == "local":  # T releases in the worst case, each with sensitivity 2C
        import dp_accounting

        sigma = dp_accounting.get_sigma_gaussian(dp.target_epsilon, dp.delta)
        if not privacy_state:
            return float(2.0 * math.sqrt(cfg.rounds) * sigma)
        worst = max((float(v) for v in privacy_state.get("precision", {}).values()), default=0.0)
        room = sigma**-2 - worst  # precision still allowed: Σ (2 / z_i)^2 <= 1 / σ^2
        if room <= 0:
            raise ConfigError(f"{key}: already spent by the {spent} rounds run so far")
        return float(2.0 * math.sqrt(left / room))
    from fedray.privacy import calibrate_noise_multiplier

    try:
        z = calibrate_noise_multiplier(
            dp.target_epsilon,
            cfg.strategy.fraction_fit,
            left,
            dp.delta,
            sampling=dp.sampling,
            population=cfg.data.num_clients,
            prior=prior,
        )
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    if prior:
        logger.warning(
            "resumed with rounds=%d under %s: the %d rounds already run keep their noise; "
            "the %d new rounds get noise_multiplier=%.4g so that the whole run stays within "
            "the target",
            cfg.rounds,
            key,
            spent,
            left,
            z,
        )
    return z


def dp_mechanism(
    cfg: Config, privacy_state: Mapping[str, Any] | None = None
) -> CentralDP | LocalDP:
    """The DP aggregator described by ``privacy.dp`` (see :func:`noise_multiplier`)."""
    dp = cfg.privacy.dp
    if dp is None:
        raise ValueError("the config has no privacy.dp section")
    z = noise_multiplier(cfg, privacy_state)
    if dp.mode == "local":
        assert not isinstance(dp.clip, str)
        return LocalDP(noise_multiplier=z, clip=dp.clip, noise_seed=dp.noise_seed)
    clip: float | AdaptiveClip = (
        AdaptiveClip(
            initial=dp.initial_clip,
            target_quantile=dp.target_quantile,
            learning_rate=dp.clip_learning_rate,
            count_stddev=dp.count_stddev,
        )
        if dp.clip == "adaptive"
        else dp.clip
    )
    m = cfg.strategy.fraction_fit * cfg.data.num_clients
    if dp.sampling == "fixed":
        m = max(cfg.strategy.min_fit_clients, round(m))
    try:
        return CentralDP(noise_multiplier=z, expected_clients=m, clip=clip)
    except ValueError as exc:
        raise ConfigError(f"privacy.dp: {exc}") from None


def budget(cfg: Config) -> float | None:
    """The ε the ledger must not exceed: ``max_epsilon``, else ``target_epsilon``.

    A ``target_epsilon`` is calibrated for one release per client per round; retried
    attempts spend more, and the run then stops at the target instead of passing it.
    """
    dp = cfg.privacy.dp
    if dp is None:
        return None
    if dp.max_epsilon is not None:
        return dp.max_epsilon
    return None if dp.target_epsilon is None else dp.target_epsilon * (1 + 1e-9)


def dp_accountant(cfg: Config, mechanism: CentralDP | LocalDP) -> Any:
    """The privacy ledger of a run with ``privacy.dp``."""
    from fedray.privacy import DPFedAvgAccountant, LocalDPAccountant

    dp = cfg.privacy.dp
    assert dp is not None and dp.delta is not None
    if isinstance(mechanism, LocalDP):
        return LocalDPAccountant(
            noise_multiplier=mechanism.noise_multiplier,
            delta=dp.delta,
            max_epsilon=budget(cfg),
        )
    adaptive = isinstance(mechanism.clip, AdaptiveClip)
    return DPFedAvgAccountant(
        noise_multiplier=mechanism.noise_multiplier,
        sampling_rate=cfg.strategy.fraction_fit,
        delta=dp.delta,
        sampling=dp.sampling,
        population=cfg.data.num_clients,
        count_noise_multiplier=2 * mechanism.count_stddev if adaptive else None,
        max_epsilon=budget(cfg),
    )


def warn_on_delta(cfg: Config) -> None:
    """Warn when δ is not well below 1/N (a guarantee that allows outright leaks)."""
    dp = cfg.privacy.dp
    if dp is not None and dp.delta is not None and dp.delta >= 1 / cfg.data.num_clients:
        logger.warning(
            "privacy.dp.delta=%g is not well below 1 / data.num_clients = %g: a guarantee "
            "at this δ allows one client's data to leak outright; use δ << 1/N (e.g. 1e-5)",
            dp.delta,
            1 / cfg.data.num_clients,
        )


def _default_out(cfg_source: Any) -> Path:
    stem = Path(str(cfg_source)).stem if isinstance(cfg_source, (str, Path)) else "run"
    return Path("runs") / f"{stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def check_inputs(cfg: Config) -> None:
    """Fail before starting anything when a data file named by the config is missing."""
    from fedray.errors import DataError

    for key, value in (("data.path", cfg.data.path), ("data.test_path", cfg.data.test_path)):
        if value and not Path(value).expanduser().is_file():
            raise DataError(
                f"{key}: file not found: '{value}' (relative paths resolve from {Path.cwd()})"
            )


def pre_aggregates(cfg: Config, strategy: Strategy) -> bool:
    """Whether hosts send one partial sum each (``runtime.pre_aggregate``, when possible).

    Possible with a linear (:class:`~fedray.aggregators.Summable`) aggregator in
    synchronous rounds without over-commitment, which must see single arrivals.
    """
    return (
        cfg.runtime.pre_aggregate
        and isinstance(strategy.aggregator, Summable)
        and strategy.buffering is None
        and cfg.strategy.over_commit == 0
    )


def make_executor(cfg: Config, strategy: Strategy) -> tuple[Any, bool]:
    """Create the executor named by ``runtime.executor``; returns (executor, started_ray)."""
    options: dict[str, Any] = {
        "client": strategy.client,
        "pre_aggregate": pre_aggregates(cfg, strategy),
        "max_update_norm": cfg.strategy.max_update_norm,
    }
    if cfg.runtime.executor == "local":
        from fedray.local import LocalExecutor

        return LocalExecutor(cfg, strategy.aggregator, **options), False
    from fedray import runtime

    started = runtime.connect(
        cfg.runtime.address, num_cpus=cfg.runtime.num_cpus, verbose=cfg.runtime.verbose
    )
    try:
        return runtime.RayExecutor(cfg, strategy.aggregator, **options), started
    except BaseException:
        if started:
            runtime.shutdown()
        raise


def run(
    config: str | Path | Mapping[str, Any] | Config,
    *,
    out: str | Path | None = None,
    overrides: Iterable[str] = (),
    callbacks: Iterable[Callback] = (),
    resume: bool = False,
) -> History:
    """Train a federated model as described by ``config``.

    Args:
        config: A YAML path, a nested dict or a :class:`~fedray.config.Config`.
        out: Output directory; defaults to ``runs/<config-name>-<timestamp>``
            (a temporary directory when ``config`` is not a file).
        overrides: ``dotted.key=value`` strings applied on top of ``config``.
        callbacks: Extra :class:`~fedray.callbacks.Callback` objects.
        resume: Continue the run in ``out`` from its last checkpoint; the finished run
            equals an uninterrupted one bit for bit (only ``rounds`` and ``runtime.*``
            may differ from the original config).

    Returns:
        A :class:`History` with per-round metrics, the summary and final weights.

    Raises:
        fedray.errors.ConfigError: The config is invalid.
        fedray.errors.FedrayError: Data or cluster problems, described in one line.
    """
    t_start = time.perf_counter()
    cfg = config_mod.load(config, overrides)
    check_inputs(cfg)
    fp = checkpoint_mod.fingerprint(cfg.to_dict())
    state = None
    if resume:
        if out is None:
            raise FedrayError("--resume needs the run directory (--out DIR) to continue")
        state = checkpoint_mod.load(out, config_fingerprint=fp)
        logger.info("resuming after round %d from %s", state.server_round, out)
    if out is None:
        out_dir = (
            _default_out(config)
            if isinstance(config, (str, Path))
            else Path(tempfile.mkdtemp(prefix="fedray-"))
        )
    else:
        out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    privacy_state = None
    if state is not None and "privacy" in state.loop_state:
        privacy_state = {**state.loop_state["privacy"], "server_round": state.server_round}
    strategy = build_strategy(cfg, privacy_state)
    dp = cfg.privacy.dp
    ledger = None
    rng_seed = None
    if dp is not None:
        warn_on_delta(cfg)
        # Sampling comes from a secret seed unless the user fixed one; the driver's
        # noise comes from a fresh secret generator each round (never checkpointed).
        rng_seed = dp.noise_seed if dp.noise_seed is not None else secrets.randbits(128)
    if dp is not None and dp.mode != "dpsgd":
        mechanism = strategy.aggregator
        if isinstance(mechanism, SecureAggregation):
            mechanism = mechanism.inner
        assert isinstance(mechanism, (CentralDP, LocalDP))
        ledger = dp_accountant(cfg, mechanism)
    executor, started_ray = make_executor(cfg, strategy)
    try:
        secure = isinstance(strategy.aggregator, SecureAggregation)
        params0 = executor.initial_params() if secure or cfg.privacy.canaries.count else None
        if isinstance(strategy.aggregator, SecureAggregation) and params0 is not None:
            dim = int(sum(np.size(p) for p in params0))
            try:
                strategy.aggregator.l2_bound(dim)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        if dp is not None and dp.mode == "dpsgd":  # per-client ε needs the shard sizes
            from fedray.privacy import DPSGDAccountant

            assert strategy.client.dp_sgd is not None and dp.delta is not None
            examples = {
                int(c): int(n)
                for info in getattr(executor, "host_info", [])
                for c, n in info["examples"].items()
            }
            ledger = DPSGDAccountant(
                noise_multiplier=strategy.client.dp_sgd.noise_multiplier,
                delta=dp.delta,
                batch_size=cfg.client.batch_size,
                local_epochs=cfg.client.local_epochs,
                examples=examples,
                max_epsilon=budget(cfg),
            )
        if ledger is not None:
            ledger.planned_rounds = cfg.rounds
        canaries = None
        if cfg.privacy.canaries.count:
            from fedray.privacy.canary import CanaryAudit

            c = cfg.privacy.canaries
            canaries = CanaryAudit(
                count=c.count,
                held_out=c.held_out or c.count,
                sampling_rate=cfg.strategy.fraction_fit,
                seed=cfg.seed,
                norm=c.norm,
            )
        startup_s = time.perf_counter() - t_start
        logger.info("started in %.1f s; %d clients", startup_s, executor.num_clients)
        recorder = RoundRecorder()
        keys = ["fit/loss", "eval/loss", "eval/accuracy", "eval/mae", "privacy/epsilon"]
        ui: Callback = (
            ProgressBar(cfg.rounds, keys=keys) if cfg.runtime.progress else LoggingCallback(keys)
        )
        csv_log = CSVLogger(out_dir / "metrics.csv", parquet=False)  # written after close
        if state is not None:  # the history so far continues in the same files
            recorder.rows = [dict(r) for r in state.rows]
            csv_log.rows = [dict(r) for r in state.rows]
        cb = CallbackList([recorder, csv_log, TensorBoardLogger(out_dir / "tb"), ui, *callbacks])
        t_rounds = time.perf_counter()
        if strategy.buffering is not None:  # FedBuff: asynchronous server steps
            from fedray.async_driver import run_async

            params = run_async(
                strategy=strategy,
                executor=executor,
                rounds=cfg.rounds,
                seed=cfg.seed,
                callback=cb,
                evaluate_every=cfg.evaluation.every,
                max_update_norm=cfg.strategy.max_update_norm,
                resume=state,
                checkpoint=lambda st: checkpoint_mod.save(out_dir, st, config_fingerprint=fp),
                checkpoint_every=cfg.checkpoint.every,
            )
        else:
            params = run_rounds(
                strategy=strategy,
                executor=executor,
                rounds=cfg.rounds,
                seed=cfg.seed,
                callback=cb,
                evaluate_every=cfg.evaluation.every,
                federated_evaluate_every=cfg.evaluation.federated_every,
                train_evaluate_every=cfg.evaluation.train_every,
                resume=state,
                checkpoint=lambda st: checkpoint_mod.save(out_dir, st, config_fingerprint=fp),
                checkpoint_every=cfg.checkpoint.every,
                policy=RoundPolicy(
                    over_commit=cfg.strategy.over_commit,
                    on_too_few=cfg.strategy.on_too_few,
                    max_retries=cfg.strategy.max_retries,
                    max_update_norm=cfg.strategy.max_update_norm,
                ),
                privacy=ledger,
                rng_seed=rng_seed,
                noise_seed=dp.noise_seed if dp is not None else None,
                canaries=canaries,
            )
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
            from fedray import runtime

            runtime.shutdown()
    csv_log.write_parquet()  # pandas only now, with the hosts gone (peak memory)
    round_times = [r["time/round_s"] for r in recorder.rows]
    summary = {
        "config": cfg.to_dict(),
        "final": recorder.rows[-1] if recorder.rows else {},
        "predictions": predictions,
        "time": {
            "startup_s": startup_s,
            "rounds_s": t_end - t_rounds,
            "total_s": time.perf_counter() - t_start,
            "round_s_median": statistics.median(round_times) if round_times else None,
        },
        "params": {"count": int(sum(np.size(p) for p in params)), "arrays": len(params)},
        "privacy": (
            {
                **ledger.report(),
                "max_epsilon": dp.max_epsilon if dp is not None else None,
                "stopped_early": len(recorder.rows) < cfg.rounds,
            }
            if ledger is not None
            else None
        ),
        "canaries": (
            canaries.estimate(params0, params, delta=dp.delta if dp and dp.delta else 1e-5)
            if canaries is not None and params0 is not None
            else None
        ),
        "hosts": [
            {k: info[k] for k in ("clients", "pid", "node_id", "setup_s") if k in info}
            for info in host_info
        ],
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    return History(out_dir=out_dir, rows=recorder.rows, summary=summary, params=params)
