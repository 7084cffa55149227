"""Which features combine: the one place that refuses a combination.

Every feature of a run is named by its config key (``strategy.norm_bound``,
``privacy.secure_aggregation.enabled``, ...). A run is described by a flat mapping of
those keys to their values, from a config (:func:`fedray.config.features`) or from a
hand-composed :class:`~fedray.strategy.Strategy` (:func:`strategy_features`).
:func:`check_compatible` holds that mapping against one table of :class:`Rule` s and
refuses the first pair that cannot work, in one line naming both keys, their values
and what to do instead. Anything not refused here must work, with its invariants
tested (``tests/test_interactions.py``, which also publishes the table).

Layer 1: knows the aggregators and strategies, never the config or the runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fedray.aggregators.base import Aggregator, LinearAggregator, chain
from fedray.errors import ConfigError
from fedray.features.base import Feature, RunShape, check_features
from fedray.privacy.mechanism import DPMechanism

MEAN_RECIPES = ("fedavg", "fedprox", "fedavgm", "fedadagrad", "fedadam", "fedyogi")
"""Recipes that aggregate with a plain mean of updates (what DP and SecAgg need)."""


def _on(value: Any) -> bool:
    """A feature is on when it is set and not zero, False or None."""
    return value is not None and value is not False and value != 0


def _is(*allowed: Any) -> Callable[[Any], bool]:
    return lambda v: v in allowed


def _not(*allowed: Any) -> Callable[[Any], bool]:
    return lambda v: v not in allowed


_DP = "privacy.dp.mode"
_SA = "privacy.secure_aggregation.enabled"
_CANARIES = "privacy.canaries.count"
_NAME = "strategy.name"


@dataclass(frozen=True)
class Rule:
    """``a`` (when ``when_a`` holds for its value) does not work with ``b`` (``when_b``).

    Attributes:
        a: The first feature's key.
        b: The second feature's key.
        why: Why not, and what to do instead; the end of the one-line error.
        when_a: Which values of ``a`` the rule is about (default: any that is on).
        when_b: Which values of ``b`` the rule is about (default: any that is on).
    """

    a: str
    b: str
    why: str
    when_a: Callable[[Any], bool] = _on
    when_b: Callable[[Any], bool] = _on

    def applies(self, features: Mapping[str, Any]) -> bool:
        """Whether both sides hold in ``features`` (a missing key is off)."""
        return self.when_a(features.get(self.a)) and self.when_b(features.get(self.b))

    def message(self, features: Mapping[str, Any]) -> str:
        """The one-line refusal, naming both keys and their values."""
        return (
            f"{self.a}={features.get(self.a)!r} does not work with "
            f"{self.b}={features.get(self.b)!r}: {self.why}"
        )


_MEAN = "a mean of clipped updates; expected one of " + ", ".join(MEAN_RECIPES)

RULES: tuple[Rule, ...] = (
    # --- every release under DP is charged or refused --------------------------------
    Rule(
        _DP,
        "evaluation.train_every",
        "per-client training metrics would leave the hosts un-noised; set evaluation.train_every=0",
    ),
    Rule(
        _DP,
        "evaluation.federated_every",
        "per-client evaluation metrics and counts would "
        "leave the hosts un-noised; set evaluation.federated_every=0 (evaluation.every uses "
        "the server's test set)",
    ),
    Rule(
        _DP,
        _NAME,
        "the asynchronous loop has no privacy ledger, so its releases would go "
        "uncharged; use a synchronous strategy (fedavg, fedprox, fedavgm, fedadam, ...)",
        when_b=_is("fedbuff"),
    ),
    Rule(
        _DP,
        "strategy.over_commit",
        "late clients' noised updates would leave their hosts "
        "without being charged, and keeping the first K arrivals changes the sampling the "
        "accountant assumes; set strategy.over_commit=0",
    ),
    Rule(
        _DP,
        "strategy.weighting",
        "DP needs uniform client weights: the example counts "
        "would leave the hosts un-noised and raise a client's sensitivity; set "
        "strategy.weighting=uniform or auto",
        when_b=_is("examples"),
    ),
    Rule(
        _DP,
        _SA,
        "each client adds only its share of the noise, so without secure "
        "aggregation the server would see every update almost un-noised; set "
        "privacy.secure_aggregation.enabled=true",
        when_a=_is("distributed"),
        when_b=lambda v: not v,
    ),
    Rule(
        _DP,
        "privacy.secure_aggregation.clip",
        "distributed DP clips each update to "
        "privacy.dp.clip, its sensitivity, and sizes the modular range itself; unset "
        "privacy.secure_aggregation.clip",
        when_a=_is("distributed"),
    ),
    Rule(
        _DP,
        _NAME,
        "client-level DP needs a mean aggregator, " + _MEAN,
        when_a=_is("central", "local", "distributed"),
        when_b=_not(None, *MEAN_RECIPES),
    ),
    Rule(
        _DP,
        "strategy.min_fit_clients",
        "central DP commits every round, even one with no "
        "participants; set strategy.min_fit_clients=1",
        when_a=_is("central"),
        when_b=lambda v: v is not None and v > 1,
    ),
    Rule(
        _DP,
        "strategy.norm_bound",
        "clients already clip to privacy.dp.clip, so the bound "
        "would only log un-noised statistics of their updates (agg/clipped_fraction); unset "
        "strategy.norm_bound",
        when_a=_is("central"),
    ),
    Rule(
        _DP,
        "strategy.max_update_norm",
        "clients already clip to privacy.dp.clip, so the "
        "check would only count un-noised statistics of their updates (failed/invalid); "
        "unset strategy.max_update_norm",
        when_a=_is("central"),
    ),
    # --- secure aggregation: the server sees only the sum -----------------------------
    Rule(
        _SA,
        _NAME,
        "the server sees only the sum, so the rule must be " + _MEAN,
        when_b=_not(None, *MEAN_RECIPES),
    ),
    Rule(
        _SA,
        "strategy.weighting",
        "a secure sum has no example counts; set strategy.weighting=uniform or auto",
        when_b=_is("examples"),
    ),
    Rule(
        _SA,
        "strategy.norm_bound",
        "the server never sees a single update to clip; set "
        "privacy.secure_aggregation.clip, which the hosts apply before masking",
    ),
    Rule(
        _SA,
        "strategy.max_update_norm",
        "the server sees only masked updates, so it cannot "
        "check their norms; set privacy.secure_aggregation.clip, which the hosts apply "
        "before masking",
    ),
    Rule(
        "strategy.aggregator",
        _SA,
        "secure aggregation must be the outermost aggregator: a "
        "wrapper outside it would get one decoded sum instead of the updates",
    ),
    Rule(
        _SA,
        "strategy.over_commit",
        "a masked update is useless without the others of its cohort; set strategy.over_commit=0",
    ),
    Rule(
        _SA,
        "attack.fraction",
        "simulated attacks tamper with updates the server never sees; set attack.fraction=0",
    ),
    Rule(
        _SA,
        "evaluation.federated_every",
        "per-client evaluation metrics and counts would "
        "reach the server in the clear, which is to learn only sums; set "
        "evaluation.federated_every=0 (evaluation.every uses the server's test set)",
    ),
    Rule(
        _SA,
        "evaluation.train_every",
        "per-client training metrics would reach the server "
        "in the clear, which is to learn only sums; set evaluation.train_every=0",
    ),
    Rule(
        _SA,
        _DP,
        "local DP already noises each update; use privacy.dp.mode=central "
        "(noised on the decoded sum)",
        when_b=_is("local"),
    ),
    Rule(
        _SA,
        "privacy.dp.clip",
        "the quantization range needs a fixed clip; give privacy.dp.clip a number",
        when_b=_is("adaptive"),
    ),
    # --- compression: the hosts compress, the inner rule gets the reconstruction -------
    Rule(
        "compression.topk",
        _SA,
        "each client keeps different coordinates, and the masks "
        "cancel only over the same ones; use compression.quantize_bits instead",
    ),
    Rule(
        "compression.rotate",
        _SA,
        "secure aggregation quantizes over the clip range in any "
        "basis (distributed DP rotates already); set compression.rotate=false",
    ),
    Rule(
        "compression.quantize_bits",
        "privacy.secure_aggregation.bits",
        "under secure "
        "aggregation the update is quantized once, by secure aggregation; set one of the two",
    ),
    Rule(
        "compression.quantize_bits",
        _DP,
        "local DP adds dense Gaussian noise after the compression, so nothing would be saved",
        when_b=_is("local"),
    ),
    Rule(
        "compression.topk",
        _DP,
        "local DP adds dense Gaussian noise after the compression, so nothing would be saved",
        when_b=_is("local"),
    ),
    Rule(
        "compression.topk",
        "compression.quantize_bits",
        "top-k sends exact values at its "
        "coordinates, and quantizing would fill in the zeros; use one of the two",
    ),
    Rule(
        "compression.topk",
        "compression.rotate",
        "a rotation spreads the kept coordinates over all of them; use one of the two",
    ),
    # --- canary audits ------------------------------------------------------------------
    Rule(_CANARIES, _SA, "canaries join the server's sum after the secure sum is decoded"),
    Rule(_CANARIES, _DP, "canaries estimate client-level central DP", when_b=_is("local", "dpsgd")),
    Rule(_CANARIES, _NAME, "canaries join a mean of updates", when_b=_not(None, *MEAN_RECIPES)),
    # --- the loop ---------------------------------------------------------------------
    Rule(
        "strategy.over_commit",
        _NAME,
        "fedbuff is already asynchronous (use strategy.concurrency); set strategy.over_commit=0",
        when_b=_is("fedbuff"),
    ),
    # --- devices ----------------------------------------------------------------------
    Rule(
        "runtime.gpus_per_host",
        "runtime.executor",
        "in-process hosts share one TensorFlow, which sees the whole GPU; use runtime.executor=ray",
        when_b=_is("local"),
    ),
    Rule(
        "runtime.gpu_memory_growth",
        "runtime.gpus_per_host",
        "memory growth applies to a host's GPU share; set runtime.gpus_per_host",
        when_b=_is(None),
    ),
    Rule(
        "runtime.address",
        "runtime.gpus_per_host",
        "the warm hosts of `fedray up` set up "
        "their TensorFlow before any GPU share is known; leave runtime.address unset",
        when_a=_is("fedray"),
    ),
    # --- balanced hosts: a client may train in any host, so nothing of it may stay in one --
    Rule(
        "runtime.balance",
        _SA,
        "a client's keys of the round stay in the host that made "
        "them, and its masking must run there too; set runtime.balance=false",
    ),
    Rule(
        "runtime.balance",
        "data.placement",
        "every host loads every client's rows, but "
        "data.placement keeps a client's rows on its own nodes; unset one of the two",
    ),
    Rule(
        "evaluation.hosts",
        "data.placement",
        "only the first client's node is sure to "
        "hold data.test_path, so host 0 evaluates alone; set evaluation.hosts=auto or 1",
        when_a=lambda v: isinstance(v, int) and v > 1,
    ),
    # --- simulated faults -------------------------------------------------------------
    Rule(
        "faults.host_hang_rate",
        "runtime.round_timeout_s",
        "only the round deadline frees a hung host; set runtime.round_timeout_s",
        when_b=_is(None),
    ),
)
"""The refusals, in the order they are checked (the first that applies is reported)."""


def check_compatible(features: Mapping[str, Any]) -> None:
    """Refuse the first combination of ``features`` that cannot work.

    Args:
        features: Config key -> value for every feature of the run (a missing key is
            off). ``privacy.dp.mode`` is None without DP.

    Raises:
        ConfigError: One line naming both keys, their values and what to do instead.

    >>> check_compatible({"strategy.name": "fedavg", "strategy.norm_bound": 2.0})
    >>> check_compatible({"privacy.secure_aggregation.enabled": True,
    ...                   "strategy.norm_bound": 2.0})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    fedray.errors.ConfigError: privacy.secure_aggregation.enabled=True does not work with ...
    """
    for rule in RULES:
        if rule.applies(features):
            raise ConfigError(rule.message(features))


def dp_mechanisms(aggregator: Aggregator, client: Any) -> list[DPMechanism]:
    """The DP mechanisms in ``aggregator``'s chain, then ``client``'s DP-SGD (if any).

    ``client`` is a strategy's :class:`~fedray.strategy.ClientOptions`; a host, which
    has only the aggregator and the client options, asks this as the strategy does.

    >>> from fedray.aggregators import LocalDP, Mean, NormBound
    >>> [type(m).__name__ for m in dp_mechanisms(NormBound(LocalDP(1.0)), None)]
    ['LocalDP']
    >>> dp_mechanisms(Mean(), None)
    []
    """
    found: list[DPMechanism] = [a for a in chain(aggregator) if isinstance(a, DPMechanism)]
    dp_sgd = getattr(client, "dp_sgd", None)
    if dp_sgd is not None:
        found.append(dp_sgd)
    return found


def _refuse_hidden_mechanisms(links: list[Aggregator]) -> None:
    """Refuse a DP mechanism held by a wrapper other than as its ``inner``.

    fedray finds a run's mechanisms along the ``inner`` chain; one kept under another
    attribute would get no ledger and noise from the public seed.

    Raises:
        ConfigError: One line naming the wrapper, the attribute and the mechanism.
    """
    for link in links:
        for name, value in vars(link).items() if hasattr(link, "__dict__") else ():
            if name != "inner" and isinstance(value, DPMechanism):
                raise ConfigError(
                    f"{type(link).__name__}.{name} holds {type(value).__name__}: fedray finds "
                    "a run's DP mechanism along the aggregators' `inner` chain, to charge it "
                    f"and keep its noise secret; make it {type(link).__name__}'s `inner`"
                )


def declared(link: Any) -> dict[str, Any]:
    """The config keys an aggregator link stands for (its optional ``declares()``).

    >>> from fedray.aggregators import Median, NormBound
    >>> declared(NormBound(Median(), max_norm=1.0)), declared(object())
    ({'strategy.norm_bound': 1.0}, {})
    """
    declares = getattr(link, "declares", None)
    return {} if declares is None else dict(declares())


def _chain_keys(links: list[Aggregator]) -> dict[str, Any]:
    """The config keys the aggregator chain's links declare; the outermost names the rule."""
    out: dict[str, Any] = {}
    for link in links:
        for key, value in declared(link).items():
            if key == _NAME:
                out.setdefault(key, value)
            else:
                out[key] = value
    return out


def strategy_features(strategy: Any) -> dict[str, Any]:
    """The features a hand-composed :class:`~fedray.strategy.Strategy` turns on.

    Walks its aggregator chain, so any wrapping order is judged by the same rules as
    the config: ``NormBound(SecureAggregation(...))`` is refused like
    ``strategy.norm_bound`` with ``privacy.secure_aggregation.enabled``.

    >>> from fedray.aggregators import Median, NormBound
    >>> from fedray.strategy import Strategy
    >>> strategy_features(Strategy(aggregator=NormBound(Median(), max_norm=1.0)))
    {'strategy.name': 'fedmedian', 'strategy.norm_bound': 1.0}
    """
    out: dict[str, Any] = {}
    links = list(chain(strategy.aggregator))
    secure = [i for i, a in enumerate(links) if declared(a).get(_SA)]
    if secure and secure[0] > 0:
        out["strategy.aggregator"] = "(".join(type(a).__name__ for a in links[: secure[0] + 1])
    _refuse_hidden_mechanisms(links)
    mechanisms = dp_mechanisms(strategy.aggregator, strategy.client)
    if len(mechanisms) > 1:
        names = " and ".join(type(m).__name__ for m in mechanisms)
        raise ConfigError(
            f"the strategy holds two DP mechanisms ({names}): each would be charged on its "
            "own ledger, and fedray accounts one; keep one of them"
        )
    if mechanisms:
        out[_DP] = mechanisms[0].privacy_mode
    out.update(_chain_keys(links))
    for feature in strategy.features:  # what each feature declares it stands for
        for key, value in feature.declaration().keys.items():
            out.setdefault(key, value)
    if strategy.buffering is not None:
        out[_NAME] = "fedbuff"
    if _NAME not in out:
        base = links[-1]
        linear = isinstance(base, LinearAggregator)
        named = strategy.name if strategy.name in MEAN_RECIPES else "fedavg"
        out[_NAME] = named if linear else f"custom({type(base).__name__})"
    return dict(sorted(out.items()))


def check_declared(features: Sequence[Feature], run: Mapping[str, Any]) -> None:
    """Judge ``features`` by their declarations in a run described by config keys.

    ``run`` is the flat mapping :func:`check_compatible` reads (a config's, merged with
    a hand-composed strategy's :func:`strategy_features`), so a configured run and a
    hand-composed one are judged alike.

    Raises:
        ConfigError: One line naming the feature and the other side (see
            :func:`fedray.features.check_features`).
    """
    mode = run.get(_DP)
    bounds = [k for k in ("strategy.norm_bound", "strategy.max_update_norm") if _on(run.get(k))]
    not_mean = [  # what makes the aggregate something other than the participants' mean
        f"{k}={run.get(k)!r}"
        for k, bad in (
            (_NAME, run.get(_NAME) not in MEAN_RECIPES),
            (_DP, mode in ("central", "distributed")),
        )
        if bad
    ]
    shape = RunShape(
        mean=not not_mean,
        aggregate=not_mean[0] if not_mean else "this aggregate",
        norm_bound=f"{bounds[0]}={run[bounds[0]]!r}" if bounds else None,
        mechanism=None if mode is None else f"{_DP}={mode!r}",
        in_training=mode == "dpsgd",
        secure=bool(run.get(_SA)),
        buffered=run.get(_NAME) == "fedbuff",
        balanced=bool(run.get("runtime.balance")),
        over_commit=run.get("strategy.over_commit") or 0,
    )
    check_features(features, shape)
