"""From a validated config to the objects a run is made of.

``build_strategy`` turns ``strategy.*`` and ``privacy.*`` into one composed
:class:`~fedray.strategy.Strategy` (a recipe, then DP, secure aggregation and the norm
bound as wrappers); :func:`fedray.strategy.rules.check_compatible` has already refused what
cannot combine. The privacy ledger, the canary audit and the executor are built here
too, so that :func:`fedray.api.run` only wires them together.

Layer 3: reads the config; the objects it builds know nothing of it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from fedray.aggregators import (
    CentralDP,
    DistributedDP,
    LinearAggregator,
    Mean,
    SecureAggregation,
)
from fedray.aggregators.compression import Quantize, Rotate
from fedray.callbacks import Callback
from fedray.client.models import check_importable
from fedray.config import Config, features
from fedray.config.build_privacy import (
    budget,
    canary_audit,
    check_dp_section,
    dp_mechanism,
    ledger,
    noise_multiplier,
    secure_bits,
    warn_on_delta,
)
from fedray.data.arrays import InMemory
from fedray.data.files import FILE_KINDS, check_file
from fedray.errors import ConfigError, one_line
from fedray.features import TopK
from fedray.features.base import reports_needed
from fedray.privacy import DPSGD
from fedray.strategy import Strategy, with_dp, with_norm_bound
from fedray.strategy.rules import check_compatible, check_declared, strategy_features

__all__ = [
    "budget",
    "build_strategy",
    "canary_audit",
    "check_dp_section",
    "check_inputs",
    "compressed",
    "dp_mechanism",
    "ledger",
    "make_executor",
    "noise_multiplier",
    "pre_aggregates",
    "recipe",
    "secure_aggregation",
    "secure_bits",
    "warn_on_delta",
    "with_config",
]

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
    (:func:`fedray.strategy.rules.strategy_features`), whatever its wrapping order.

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
            if w == "auto" and composed.aggregator.weighting == "examples" and not cfg.privacy.dp:
                logger.warning(  # DP's uniform weights go without saying; SecAgg's do not
                    "strategy.weighting=auto: clients are weighted uniformly, not by their "
                    "example counts, because a secure sum carries no example counts (set "
                    "strategy.weighting=uniform to say so)"
                )
            composed = replace(composed, aggregator=Mean(weighting="uniform"))
    held = composed.dp_mechanisms()
    check_dp_section(cfg, held)
    dp = None if held else cfg.privacy.dp  # a strategy's own mechanism is the run's one
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
    else:
        composed = replace(composed, aggregator=compressed(cfg, composed.aggregator))
        if cfg.compression.topk is not None:  # a feature: its residual stays per client
            topk = TopK(
                fraction=cfg.compression.topk, error_feedback=cfg.compression.error_feedback
            )
            composed = replace(composed, features=(*composed.features, topk))
    if cfg.strategy.norm_bound is not None:
        composed = with_norm_bound(composed, cfg.strategy.norm_bound)
    check_declared(composed.features, {**features(cfg), **strategy_features(composed)})
    return composed


def compressed(cfg: Config, inner: Any) -> Any:
    """``compression.*`` around ``inner``: quantize innermost, then rotate (top-k is a feature)."""
    c = cfg.compression
    if c.quantize_bits is not None:
        inner = Quantize(inner=inner, bits=c.quantize_bits)
    if c.rotate:
        inner = Rotate(inner=inner)
    return inner


def secure_aggregation(cfg: Config, inner: Any) -> SecureAggregation:
    """``privacy.secure_aggregation`` around ``inner`` (a mean, central or distributed DP)."""
    sa = cfg.privacy.secure_aggregation
    if not isinstance(inner, (Mean, CentralDP, DistributedDP)):
        raise ConfigError(
            "privacy.secure_aggregation.enabled=true needs a uniform mean or central DP "
            f"inside it, got {type(inner).__name__}"
        )
    clip = sa.clip
    if clip is None:  # DP's clip, or Flower's SecAgg+ clipping range
        clip = inner.rule.initial if isinstance(inner, CentralDP) else 8.0
    degree = {"auto": None, "all": cfg.data.num_clients}.get(str(sa.neighbours))
    if isinstance(sa.neighbours, int):
        degree = sa.neighbours
    return SecureAggregation(
        inner=inner if isinstance(inner, CentralDP | DistributedDP) else Mean(weighting="uniform"),
        clip=clip,
        bits=secure_bits(cfg),
        degree=degree,
        threshold=sa.threshold,
        min_clients=sa.min_clients,
    )


def run_arguments(strategy: Any, callbacks: Any) -> tuple[Strategy | None, list[Callback]]:
    """``fedray.run``'s ``strategy`` and ``callbacks``, or one line saying what is wrong.

    Keras habits are the likely mistakes: a recipe's name for ``strategy``, a Keras
    callback among ``callbacks``.

    Raises:
        ConfigError: Naming the argument, the value passed and what is expected.
    """
    if strategy is not None and not isinstance(strategy, Strategy):
        raise ConfigError(
            f"strategy = {strategy!r}: a {type(strategy).__name__}; expected a "
            "fedray.strategy.Strategy, e.g. fedray.strategy.fedprox(mu=0.01), or the config's "
            "strategy section (strategy: {name: fedprox, ...})"
        )
    if isinstance(callbacks, Callback) or not isinstance(callbacks, Iterable):
        raise ConfigError(
            f"callbacks = <{type(callbacks).__name__}>: expected a list of "
            "fedray.callbacks.Callback objects"
        )
    listed = list(callbacks)
    for i, cb in enumerate(listed):
        if not isinstance(cb, Callback):
            raise ConfigError(
                f"callbacks[{i}] = <{type(cb).__name__}>: not a fedray.callbacks.Callback; "
                "expected one whose hooks (on_round_end(server_round, logs), ...) see federated "
                "rounds; a Keras callback sees one client's training"
            )
    return strategy, listed


def check_predict(cfg: Config, executor: Any) -> None:
    """Fail before round 1 when the model cannot take ``evaluation.predict``'s inputs.

    One prediction with the initial weights, on host 0: the inputs' width is known only
    once a host has the data, and a mistake found after the last round costs the run.

    Raises:
        ConfigError: Naming the key, its value and the model's reason, in one line.
    """
    inputs = cfg.evaluation.predict
    if not inputs:
        return
    from fedray.runtime.stream import unwrap

    try:
        executor.predict(executor.initial_params(), inputs)
    except Exception as exc:
        raise ConfigError(
            f"evaluation.predict = {inputs!r}: the model cannot take these inputs "
            f"({one_line(unwrap(exc))}); expected rows shaped as the data's features"
        ) from None


def scratch(cfg: Config) -> Config:
    """``cfg`` for a run in a temporary directory: no checkpoint unless one was asked for.

    Nothing could resume such a run, and a checkpoint would keep its directory
    (:func:`fedray.rundirs.kept_for`).
    """
    if "every" in cfg.checkpoint.model_fields_set:
        return cfg
    return cfg.model_copy(update={"checkpoint": cfg.checkpoint.model_copy(update={"every": 0})})


def check_inputs(cfg: Config) -> None:
    """Fail before starting anything when the config names what cannot be used.

    Raises:
        ConfigError: ``model.name``'s module cannot be found.
        DataError: A missing data file, a folder, an unreadable or empty file, or one
            that does not start as ``data.dataset`` (or ``data.name``) reads it.
    """
    check_importable(cfg.model.name)
    d = cfg.data
    kind = FILE_KINDS.get(d.dataset)
    if d.dataset == "huggingface" and d.name in ("csv", "parquet", "json"):
        kind = d.name
    for key, value in (("data.path", d.path), ("data.test_path", d.test_path)):
        if value:
            check_file(key, value, kind)


def pre_aggregates(cfg: Config, strategy: Strategy) -> bool:
    """Whether hosts send one partial sum each (``runtime.pre_aggregate``, when possible).

    Possible with a linear (:class:`~fedray.aggregators.LinearAggregator`) aggregator in
    synchronous rounds without over-commitment, which must see single arrivals, and when
    no feature reports per client (its server half reads every participant's report).
    """
    return (
        cfg.runtime.pre_aggregate
        and isinstance(strategy.aggregator, LinearAggregator)
        and not reports_needed(strategy.features)
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
        "features": strategy.features,
        "pre_aggregate": pre_aggregates(cfg, strategy),
        "max_update_norm": cfg.strategy.max_update_norm,
        "source": source,
    }
    if cfg.runtime.executor == "local":
        from fedray.runtime.local import LocalExecutor
        from fedray.runtime.stream import start_error

        try:
            return LocalExecutor(cfg, strategy.aggregator, **options), False
        except Exception as exc:  # in one line, as a Ray host's start-up error
            raise start_error(exc, "a client host") from None
    from fedray.runtime.connect import connect, shutdown
    from fedray.runtime.ray_executor import RayExecutor
    from fedray.runtime.warm import resolve_address

    rt = cfg.runtime
    if (address := resolve_address(rt.address)) != rt.address:  # $FEDRAY_ADDRESS
        cfg = cfg.model_copy(update={"runtime": rt.model_copy(update={"address": address})})
        check_compatible(features(cfg))  # as if the config had named it
    started = connect(
        address,
        num_cpus=rt.num_cpus,
        num_gpus=rt.num_gpus,
        verbose=rt.verbose,
        timeout_s=rt.connect_timeout_s,
    )
    try:
        return RayExecutor(cfg, strategy.aggregator, **options), started
    except BaseException:
        if started:
            shutdown()
        raise
