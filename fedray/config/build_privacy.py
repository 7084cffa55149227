"""The privacy half of the build: DP mechanisms, their calibration and their ledgers.

:mod:`fedray.config.build` composes the strategy and re-exports these; here each
``privacy.dp.mode`` becomes its aggregator (:func:`dp_mechanism`) and its ledger
(:func:`ledger`), and ``privacy.canaries`` its audit.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from fedray.aggregators import AdaptiveClip, CentralDP, DistributedDP, LocalDP
from fedray.config import Config
from fedray.errors import ConfigError
from fedray.privacy.mechanism import DPMechanism, RunFacts, describe
from fedray.strategy import Strategy

logger = logging.getLogger("fedray.config.build")


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
) -> CentralDP | LocalDP | DistributedDP:
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
        if dp.mode == "distributed":
            return DistributedDP(
                noise_multiplier=z,
                expected_clients=m,
                population=cfg.data.num_clients,
                clip=float(dp.clip),
                mechanism=dp.mechanism,
                bits=secure_bits(cfg),
                max_dropout=dp.max_dropout,
                noise_seed=dp.noise_seed,
            )
        return CentralDP(noise_multiplier=z, expected_clients=m, clip=clip)
    except ValueError as exc:
        raise ConfigError(f"privacy.dp: {exc}") from None


def secure_bits(cfg: Config) -> int:
    """Secure aggregation's bits: ``compression.quantize_bits`` when set."""
    bits = cfg.compression.quantize_bits
    return cfg.privacy.secure_aggregation.bits if bits is None else bits


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


def run_facts(cfg: Config, strategy: Strategy, executor: Any, dim: int | None = None) -> RunFacts:
    """What a DP mechanism's ledger needs to know about this run (see :class:`RunFacts`).

    Sampling comes from the composed strategy (the truth for a hand-composed one too);
    shard sizes leave the hosts only under DP-SGD, where they are public.
    """
    dp = cfg.privacy.dp
    if dp is None or dp.delta is None:
        raise ValueError("the config has no privacy.dp.delta")
    examples = {
        int(c): int(n)
        for info in getattr(executor, "host_info", [])
        for c, n in info.get("examples", {}).items()
    }
    return RunFacts(
        delta=dp.delta,
        sampling_rate=strategy.fraction_fit,
        sampling=strategy.sampling,
        population=int(executor.num_clients),
        max_epsilon=budget(cfg),
        planned_rounds=cfg.rounds,
        dim=dim,
        batch_size=cfg.client.batch_size,
        local_epochs=cfg.client.local_epochs,
        examples=examples,
    )


def ledger(cfg: Config, strategy: Strategy, executor: Any, dim: int | None = None) -> Any:
    """The run's privacy ledger: its strategy's DP mechanism's, or None without one.

    Whether a run is private is decided by the composed strategy
    (:meth:`~fedray.strategy.Strategy.dp_mechanisms`), never by the config alone, so a
    strategy composed by hand is charged as the configured one is
    (:func:`check_dp_section`, at build time, made sure ``privacy.dp.delta`` is set).
    """
    held = strategy.dp_mechanisms()
    if not held:
        return None
    return held[0].accountant(run_facts(cfg, strategy, executor, dim))


def check_dp_section(cfg: Config, held: Sequence[DPMechanism]) -> None:
    """Refuse a ``privacy.dp`` section that does not fit the strategy's DP mechanisms.

    A strategy that holds its own mechanism needs ``privacy.dp.delta`` (the δ of its
    guarantee) and nothing that would make a second mechanism; a config that builds the
    mechanism needs its noise (``noise_multiplier`` or ``target_epsilon``).

    Raises:
        ConfigError: One line naming what is missing or what conflicts.
    """
    dp = cfg.privacy.dp
    if not held:
        if dp is not None and dp.noise_multiplier is None and dp.target_epsilon is None:
            raise ConfigError(
                "privacy.dp needs noise_multiplier (z >= 0) or target_epsilon; only a strategy "
                "that holds its own DP mechanism (fedray.run(strategy=...)) leaves both unset"
            )
        return
    name = describe(held[0])
    if dp is None or dp.delta is None:
        raise ConfigError(
            f"the strategy holds {name}, whose (ε, δ) guarantee needs a δ: set "
            "privacy.dp.delta, e.g. privacy={'dp': {'delta': 1e-5}} (its noise and clip are "
            "the strategy's)"
        )
    for key in ("noise_multiplier", "target_epsilon"):
        value = getattr(dp, key)
        if value is not None:
            raise ConfigError(
                f"privacy.dp.{key}={value!r} does not work with the strategy's {name}: the "
                "strategy's mechanism is the run's one; keep only privacy.dp.delta (and "
                "max_epsilon)"
            )
    mode = held[0].privacy_mode
    if "mode" in dp.model_fields_set and dp.mode != mode:
        raise ConfigError(
            f"privacy.dp.mode={dp.mode!r} does not work with the strategy's {name}, a "
            f"{mode!r} mechanism; leave privacy.dp.mode unset"
        )


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
