"""From a validated config to the objects a run is made of.

``build_strategy`` turns ``strategy.*`` and ``privacy.*`` into one composed
:class:`~fedray.strategy.Strategy` (a recipe, then DP, secure aggregation and the norm
bound as wrappers); :func:`fedray.compat.check_compatible` has already refused what
cannot combine. The privacy ledger, the canary audit and the executor are built here
too, so that :func:`fedray.api.run` only wires them together.

Layer 3: reads the config; the objects it builds know nothing of it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from fedray.aggregators import (
    AdaptiveClip,
    CentralDP,
    LinearAggregator,
    LocalDP,
    Mean,
    SecureAggregation,
)
from fedray.compat import chain, check_compatible, strategy_features
from fedray.config import Config, features
from fedray.errors import ConfigError, DataError
from fedray.memory import InMemory
from fedray.records import DPSGD
from fedray.strategy import Strategy, with_dp, with_norm_bound

logger = logging.getLogger(__name__)


def recipe(cfg: Config) -> Strategy:
    """The recipe named by ``strategy.name``, with its options (its config's ``build``).

    >>> from fedray import config
    >>> recipe(config.load({}, ["strategy.name=trimmed_mean", "strategy.trim_beta=0.2"])).name
    'trimmed_mean'
    """
    return cfg.strategy.build(cfg.data.num_clients)


def with_config(cfg: Config, strategy: Strategy) -> Config:
    """``cfg`` with the sampling of a hand-composed ``strategy`` (its accountant reads it)."""
    s = cfg.strategy.model_copy(
        update={
            "fraction_fit": strategy.fraction_fit,
            "clients_per_round": None,
            "min_fit_clients": max(1, strategy.min_fit_clients),
        }
    )
    return cfg.model_copy(update={"strategy": s})


def build_strategy(
    cfg: Config,
    privacy_state: Mapping[str, Any] | None = None,
    *,
    strategy: Strategy | None = None,
) -> Strategy:
    """The run's composed strategy: ``strategy`` (else the recipe) with ``privacy.*``.

    ``privacy_state`` is the ledger of a resumed run: a ``target_epsilon`` run is then
    calibrated for the rounds still to come, on top of those already spent. A
    hand-composed ``strategy`` is judged by the same rules as a config
    (:func:`fedray.compat.strategy_features`), whatever its wrapping order.

    Raises:
        ConfigError: The combination is refused (one line naming both features).
    """
    if strategy is not None:
        check_compatible({**features(cfg), **strategy_features(strategy)})
        composed = strategy
    else:
        composed = recipe(cfg)
        private = cfg.privacy.dp is not None or cfg.privacy.secure_aggregation.enabled
        w = getattr(cfg.strategy, "weighting", "auto")
        if (w == "uniform" or (w == "auto" and private)) and isinstance(composed.aggregator, Mean):
            composed = replace(composed, aggregator=Mean(weighting="uniform"))
    dp = cfg.privacy.dp
    if dp is not None and dp.mode == "dpsgd":  # example-level DP inside each client
        sgd = DPSGD(
            noise_multiplier=noise_multiplier(cfg, privacy_state),
            clip=float(dp.clip),
            noise_seed=dp.noise_seed,
        )
        composed = replace(composed, client=replace(composed.client, dp_sgd=sgd))
    elif dp is not None:
        composed = with_dp(composed, dp_mechanism(cfg, privacy_state), sampling=dp.sampling)
    if cfg.privacy.secure_aggregation.enabled:
        composed = replace(composed, aggregator=secure_aggregation(cfg, composed.aggregator))
    if cfg.strategy.norm_bound is not None:
        composed = with_norm_bound(composed, cfg.strategy.norm_bound)
    return composed


def secure_aggregation(cfg: Config, inner: Any) -> SecureAggregation:
    """``privacy.secure_aggregation`` around ``inner`` (a uniform mean or central DP)."""
    sa = cfg.privacy.secure_aggregation
    if not isinstance(inner, (Mean, CentralDP)):
        raise ConfigError(
            "privacy.secure_aggregation.enabled=true needs a uniform mean or central DP "
            f"inside it, got {type(inner).__name__}"
        )
    clip = sa.clip
    if clip is None:  # DP's clip, or Flower's SecAgg+ clipping range
        clip = float(inner.clip) if isinstance(inner, CentralDP) else 8.0  # type: ignore[arg-type]
    degree = {"auto": None, "all": cfg.data.num_clients}.get(str(sa.neighbours))
    if isinstance(sa.neighbours, int):
        degree = sa.neighbours
    return SecureAggregation(
        inner=inner if isinstance(inner, CentralDP) else Mean(weighting="uniform"),
        clip=clip,
        bits=sa.bits,
        degree=degree,
        threshold=sa.threshold,
        min_clients=sa.min_clients,
    )


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
    if dp.target_epsilon is None or dp.delta is None:  # checked by the config
        raise ConfigError("privacy.dp needs target_epsilon and delta")
    plan = (privacy_state or {}).get("plan")
    if plan and int(plan["rounds"]) == cfg.rounds:
        return float(plan["noise_multiplier"])
    from fedray.privacy import RoundEvent

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
        return LocalDP(noise_multiplier=z, clip=float(dp.clip), noise_seed=dp.noise_seed)
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
    """The privacy ledger of a run with ``privacy.dp`` (central or local)."""
    from fedray.privacy import DPFedAvgAccountant, LocalDPAccountant

    dp = cfg.privacy.dp
    if dp is None or dp.delta is None:
        raise ValueError("the config has no privacy.dp section")
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


def ledger(cfg: Config, strategy: Strategy, executor: Any) -> Any:
    """The run's privacy ledger (None without DP); DP-SGD's needs the hosts' shard sizes."""
    dp = cfg.privacy.dp
    if dp is None or dp.delta is None:
        return None
    if dp.mode == "dpsgd":
        from fedray.privacy import DPSGDAccountant

        sgd = strategy.client.dp_sgd
        if sgd is None:
            raise ValueError("privacy.dp.mode='dpsgd' but the strategy's clients have no DP-SGD")
        examples = {
            int(c): int(n)
            for info in getattr(executor, "host_info", [])
            for c, n in info["examples"].items()
        }
        out: Any = DPSGDAccountant(
            noise_multiplier=sgd.noise_multiplier,
            delta=dp.delta,
            batch_size=cfg.client.batch_size,
            local_epochs=cfg.client.local_epochs,
            examples=examples,
            max_epsilon=budget(cfg),
        )
    else:
        # The mechanism, wherever the wrappers put it (SecAgg, a norm bound, ...).
        found = [a for a in chain(strategy.aggregator) if isinstance(a, (CentralDP, LocalDP))]
        if not found:
            raise ValueError(
                f"privacy.dp but no DP mechanism in {type(strategy.aggregator).__name__}"
            )
        out = dp_accountant(cfg, found[0])
    out.planned_rounds = cfg.rounds
    return out


def canary_audit(cfg: Config) -> Any:
    """The canary audit of ``privacy.canaries`` (None when off)."""
    c = cfg.privacy.canaries
    if not c.count:
        return None
    from fedray.privacy.canary import CanaryAudit

    return CanaryAudit(
        count=c.count,
        held_out=c.held_out or c.count,
        sampling_rate=cfg.strategy.fraction_fit,
        seed=cfg.seed,
        norm=c.norm,
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


def check_inputs(cfg: Config) -> None:
    """Fail before starting anything when a data file named by the config is missing."""
    for key, value in (("data.path", cfg.data.path), ("data.test_path", cfg.data.test_path)):
        if value and not Path(value).expanduser().is_file():
            raise DataError(
                f"{key}: file not found: '{value}' (relative paths resolve from {Path.cwd()})"
            )


def pre_aggregates(cfg: Config, strategy: Strategy) -> bool:
    """Whether hosts send one partial sum each (``runtime.pre_aggregate``, when possible).

    Possible with a linear (:class:`~fedray.aggregators.LinearAggregator`) aggregator in
    synchronous rounds without over-commitment, which must see single arrivals.
    """
    return (
        cfg.runtime.pre_aggregate
        and isinstance(strategy.aggregator, LinearAggregator)
        and strategy.buffering is None
        and cfg.strategy.over_commit == 0
    )


def make_executor(
    cfg: Config, strategy: Strategy, source: InMemory | None = None
) -> tuple[Any, bool]:
    """Create the executor named by ``runtime.executor``; returns (executor, started_ray).

    ``source`` holds the clients' arrays when they come from ``fedray.fit``.
    """
    if (cfg.data.dataset == "memory") != (source is not None):
        raise ConfigError(
            "data.dataset='memory' is for arrays passed to fedray.fit(model_fn, clients, ...); "
            "a config file names a dataset (linreg, blobs, csv, parquet, npz, ...)"
        )
    options: dict[str, Any] = {
        "client": strategy.client,
        "pre_aggregate": pre_aggregates(cfg, strategy),
        "max_update_norm": cfg.strategy.max_update_norm,
        "source": source,
    }
    if cfg.runtime.executor == "local":
        from fedray.runtime.local import LocalExecutor

        return LocalExecutor(cfg, strategy.aggregator, **options), False
    from fedray.runtime.connect import connect, shutdown
    from fedray.runtime.ray_executor import RayExecutor

    started = connect(
        cfg.runtime.address, num_cpus=cfg.runtime.num_cpus, verbose=cfg.runtime.verbose
    )
    try:
        return RayExecutor(cfg, strategy.aggregator, **options), started
    except BaseException:
        if started:
            shutdown()
        raise
