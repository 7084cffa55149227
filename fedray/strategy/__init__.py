"""Strategies: an aggregator, a server optimizer, client sampling and client settings.

A strategy is data, not behaviour: a frozen dataclass composed of small objects.
Named recipes are plain functions (``fedavg()``), never subclasses.

FedAvg: McMahan et al., AISTATS 2017, arXiv:1602.05629. FedProx: Li et al., MLSys 2020,
arXiv:1812.06127. SCAFFOLD: Karimireddy et al., ICML 2020, arXiv:1910.06378.
FedAvgM: Hsu et al. 2019, arXiv:1909.06335. FedAdagrad / FedAdam / FedYogi: Reddi et al., ICLR 2021,
arXiv:2003.00295. Median / trimmed mean: Yin et al., ICML 2018, arXiv:1803.01498.
Krum / Multi-Krum: Blanchard et al., NeurIPS 2017.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from fedray.aggregators import (
    Aggregator,
    Krum,
    Mean,
    Median,
    NormBound,
    StalenessWeighted,
    TrimmedMean,
)
from fedray.aggregators.base import chain, drops_settings
from fedray.aggregators.mean import Weighting
from fedray.errors import ConfigError
from fedray.features import Feature, FedProx, Scaffold
from fedray.privacy.dpsgd import DPSGD
from fedray.privacy.mechanism import DPMechanism
from fedray.records import Buffering
from fedray.strategy.rules import check_compatible, check_declared, dp_mechanisms, strategy_features
from fedray.strategy.server_opt import ServerAdaptive, ServerMomentum, ServerOptimizer, ServerSGD


@dataclass(frozen=True)
class ClientOptions:
    """How clients train, as decided by the strategy (sent to hosts once, at start-up).

    Attributes:
        dp_sgd: Example-level DP-SGD local steps (:class:`DPSGD`), or None.
    """

    dp_sgd: DPSGD | None = None


@dataclass(frozen=True)
class Strategy:
    """Everything that decides how a round turns client work into a new model.

    Attributes:
        aggregator: Combines client deltas (runs its ``encode`` in the hosts).
        server_optimizer: Applies the aggregated delta to the global model.
        fraction_fit: Fraction of registered clients sampled per round.
        min_fit_clients: A round commits only if at least this many clients succeed;
            also the minimum number sampled.
        name: Recipe name, for logs and summaries.
        client: How clients train (DP-SGD).
        buffering: If set, rounds are asynchronous server steps (FedBuff): clients train
            continuously and every ``buffer_size`` arrivals make one server step.
        sampling: ``"fixed"`` samples ``round(fraction_fit * N)`` distinct clients;
            ``"poisson"`` lets each client join independently with probability
            ``fraction_fit`` (the sampling DP accounting assumes; the count varies).
        features: Algorithms with a client half and a server half, in order
            (:mod:`fedray.features`: FedProx's term, SCAFFOLD's variates, top-k, or
            the user's own). Their client halves run after local training and before
            the aggregator's ``encode``; their server halves after the aggregator.
    """

    aggregator: Aggregator = field(default_factory=Mean)
    server_optimizer: ServerOptimizer = field(default_factory=ServerSGD)
    fraction_fit: float = 1.0
    min_fit_clients: int = 1
    name: str = "custom"
    client: ClientOptions = field(default_factory=ClientOptions)
    buffering: Buffering | None = None
    sampling: str = "fixed"
    features: tuple[Feature, ...] = ()

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction_fit <= 1.0:
            raise ValueError(f"fraction_fit must be in (0, 1], got {self.fraction_fit}")
        if self.min_fit_clients < 0:
            raise ValueError(f"min_fit_clients must be >= 0, got {self.min_fit_clients}")
        if self.sampling not in ("fixed", "poisson"):
            raise ValueError(f"sampling must be 'fixed' or 'poisson', got {self.sampling!r}")
        for f in self.features:
            if not isinstance(f, Feature):
                raise TypeError(
                    f"features: {f!r} is a {type(f).__name__}; expected fedray.features.Feature "
                    "objects (FedProx(mu=0.01), Scaffold(), TopK(0.01), or a subclass)"
                )
        dropped = drops_settings(chain(self.aggregator))
        if dropped is not None:
            wrapper, sender = (type(a).__name__ for a in dropped)
            raise ConfigError(
                f"{wrapper} wraps {sender}, which sends per-round settings to the clients (DP's "
                f"adaptive clip norm), but has no client_settings hook to pass them on; give "
                f"{wrapper} one: def client_settings(self, state): return "
                "fedray.aggregators.client_settings(self.inner, <the inner's state>)"
            )

    def dp_mechanisms(self) -> list[DPMechanism]:
        """The differential-privacy mechanisms the strategy holds: whether the run is private.

        Those in its aggregator chain (central, local, distributed DP), then its clients'
        DP-SGD. A config's ``privacy.dp`` and a strategy composed by hand are judged and
        charged by this list alike.

        >>> from fedray.aggregators import LocalDP
        >>> private = with_dp(fedavg(weighting="uniform"), LocalDP(1.0))
        >>> ", ".join(m.privacy_mode for m in private.dp_mechanisms())
        'local'
        >>> fedavg().dp_mechanisms()
        []
        """
        return dp_mechanisms(self.aggregator, self.client)

    def sample_clients(self, num_clients: int, rng: np.random.Generator) -> list[int]:
        """Sample ``max(min_fit_clients, round(fraction_fit * num_clients))`` distinct ids.

        With ``sampling="poisson"`` each client joins with probability ``fraction_fit``.

        Returns the ids sorted ascending. Raises ``ValueError`` when fewer than
        ``min_fit_clients`` clients are registered.

        >>> s = Strategy(fraction_fit=0.5, min_fit_clients=1)
        >>> ids = s.sample_clients(10, np.random.default_rng(0))
        >>> len(ids), len(set(ids)), all(0 <= i < 10 for i in ids)
        (5, 5, True)
        """
        if num_clients < self.min_fit_clients:
            raise ValueError(
                f"min_fit_clients={self.min_fit_clients} but only {num_clients} clients exist"
            )
        if self.sampling == "poisson":
            if self.fraction_fit >= 1.0:
                return list(range(num_clients))
            return [int(i) for i in np.flatnonzero(rng.random(num_clients) < self.fraction_fit)]
        k = max(self.min_fit_clients, round(self.fraction_fit * num_clients))
        k = min(k, num_clients)
        if k == num_clients:
            return list(range(num_clients))
        return sorted(int(i) for i in rng.choice(num_clients, size=k, replace=False))


def fedavg(
    *,
    fraction_fit: float = 1.0,
    min_fit_clients: int = 1,
    weighting: Weighting = "examples",
    server_learning_rate: float = 1.0,
) -> Strategy:
    """FedAvg: a mean of client deltas (example-weighted by default), then server SGD.

    ``weighting="uniform"`` gives every client the same weight (the textbook's
    unweighted FedAvg, and what DP and secure aggregation need).
    """
    return Strategy(
        aggregator=Mean(weighting=weighting),
        server_optimizer=ServerSGD(learning_rate=server_learning_rate),
        fraction_fit=fraction_fit,
        min_fit_clients=min_fit_clients,
        name="fedavg",
    )


def fedprox(*, mu: float = 0.01, fraction_fit: float = 1.0, min_fit_clients: int = 1) -> Strategy:
    """FedProx (Li et al., MLSys 2020): local steps on ``f(w) + mu/2 * ||w - w_global||^2``.

    The aggregation and server step are FedAvg's; ``mu = 0`` trains exactly like FedAvg.
    """
    base = fedavg(fraction_fit=fraction_fit, min_fit_clients=min_fit_clients)
    return replace(base, name="fedprox", features=(FedProx(mu),))


def scaffold(
    *,
    server_learning_rate: float = 1.0,
    fraction_fit: float = 1.0,
    min_fit_clients: int = 1,
) -> Strategy:
    """SCAFFOLD (Karimireddy et al., ICML 2020): control variates correct client drift.

    Client variates live in the client hosts across rounds (so they survive packing);
    the server variate is broadcast with the weights.
    """
    return Strategy(
        aggregator=Mean(weighting="uniform"),
        server_optimizer=ServerSGD(server_learning_rate),
        fraction_fit=fraction_fit,
        min_fit_clients=min_fit_clients,
        name="scaffold",
        features=(Scaffold(),),
    )


def fedbuff(
    *,
    concurrency: int = 10,
    buffer_size: int = 5,
    server_learning_rate: float = 1.0,
    fraction_fit: float = 1.0,
    min_fit_clients: int = 1,
) -> Strategy:
    """FedBuff (Nguyen et al., AISTATS 2022, arXiv:2106.06639): asynchronous, buffered.

    ``concurrency`` clients train at once; every ``buffer_size`` arrivals, the
    staleness-weighted (``1/sqrt(1+s)``) mean moves the model by server SGD.
    """
    return Strategy(
        aggregator=StalenessWeighted(Mean(weighting="uniform")),
        server_optimizer=ServerSGD(server_learning_rate),
        fraction_fit=fraction_fit,
        min_fit_clients=min_fit_clients,
        name="fedbuff",
        buffering=Buffering(concurrency=concurrency, buffer_size=buffer_size),
    )


def fedavgm(
    *,
    server_learning_rate: float = 1.0,
    server_momentum: float = 0.9,
    fraction_fit: float = 1.0,
    min_fit_clients: int = 1,
) -> Strategy:
    """FedAvg with server momentum (Hsu et al. 2019)."""
    return Strategy(
        aggregator=Mean(weighting="examples"),
        server_optimizer=ServerMomentum(server_learning_rate, server_momentum),
        fraction_fit=fraction_fit,
        min_fit_clients=min_fit_clients,
        name="fedavgm",
    )


def _adaptive(name: str, adaptivity: str) -> Callable[..., Strategy]:
    def recipe(
        *,
        server_learning_rate: float = 1e-2,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
        fraction_fit: float = 1.0,
        min_fit_clients: int = 1,
    ) -> Strategy:
        return Strategy(
            aggregator=Mean(weighting="examples"),
            server_optimizer=ServerAdaptive(
                adaptivity,  # type: ignore[arg-type]
                learning_rate=server_learning_rate,
                beta1=beta1,
                beta2=beta2,
                tau=tau,
            ),
            fraction_fit=fraction_fit,
            min_fit_clients=min_fit_clients,
            name=name,
        )

    recipe.__name__ = name
    recipe.__doc__ = f"{name}: example-weighted mean + server {adaptivity} (Reddi et al. 2021)."
    return recipe


fedadagrad = _adaptive("fedadagrad", "adagrad")
fedadam = _adaptive("fedadam", "adam")
fedyogi = _adaptive("fedyogi", "yogi")


def fedmedian(*, fraction_fit: float = 1.0, min_fit_clients: int = 1) -> Strategy:
    """Coordinate-wise median of client deltas, server SGD with lr 1."""
    return Strategy(Median(), ServerSGD(), fraction_fit, min_fit_clients, "fedmedian")


def trimmed_mean(
    *, beta: float = 0.1, fraction_fit: float = 1.0, min_fit_clients: int = 1
) -> Strategy:
    """Coordinate-wise beta-trimmed mean, server SGD with lr 1."""
    return Strategy(TrimmedMean(beta), ServerSGD(), fraction_fit, min_fit_clients, "trimmed_mean")


def krum(
    *,
    num_byzantine: int = 0,
    num_selected: int | None = 1,
    fraction_fit: float = 1.0,
    min_fit_clients: int = 1,
) -> Strategy:
    """Krum (``num_selected=1``); see :func:`multi_krum` for the averaged variant."""
    agg = Krum(num_byzantine=num_byzantine, num_selected=num_selected)
    name = "krum" if num_selected == 1 else "multi_krum"
    return Strategy(agg, ServerSGD(), fraction_fit, min_fit_clients, name)


def multi_krum(
    *,
    num_byzantine: int = 0,
    num_selected: int | None = None,
    fraction_fit: float = 1.0,
    min_fit_clients: int = 1,
) -> Strategy:
    """Multi-Krum: the mean of the ``num_selected`` best-scored updates (default n - f)."""
    return krum(
        num_byzantine=num_byzantine,
        num_selected=num_selected,
        fraction_fit=fraction_fit,
        min_fit_clients=min_fit_clients,
    )


def with_norm_bound(strategy: Strategy, max_norm: float) -> Strategy:
    """The same strategy with every update clipped to ``max_norm`` before aggregation."""
    return replace(strategy, aggregator=NormBound(inner=strategy.aggregator, max_norm=max_norm))


def with_dp(
    strategy: Strategy,
    mechanism: Aggregator,
    *,
    sampling: str = "poisson",
) -> Strategy:
    """The same strategy with its mean replaced by a differentially private one.

    Central DP also samples clients the way its accountant assumes (``sampling``) and
    commits every round, even one with no participants (the noise is still released
    and the round still counts). Server optimizers are post-processing and are kept.

    Raises:
        ConfigError: :func:`fedray.strategy.rules.check_compatible` refuses the combination:
            the strategy does not aggregate with a plain mean (robust aggregators,
            SCAFFOLD and FedBuff have no DP analysis here), or it weights clients by
            example counts (DP needs uniform weights).
    """
    if not isinstance(mechanism, DPMechanism):
        raise TypeError(
            f"with_dp needs a DP mechanism (central, local or distributed DP), got {mechanism!r}"
        )
    mode = mechanism.privacy_mode
    features = {**strategy_features(strategy), "privacy.dp.mode": mode}
    if mode == "distributed":  # with_dp goes first; the build wraps secure aggregation next
        features["privacy.secure_aggregation.enabled"] = True
    check_compatible(features)
    check_declared(strategy.features, features)
    if mode == "local":  # each client noises its own update: no sampling to amplify
        return replace(strategy, aggregator=mechanism)
    return replace(strategy, aggregator=mechanism, sampling=sampling, min_fit_clients=0)


STRATEGIES: dict[str, Callable[..., Strategy]] = {
    "fedavg": fedavg,
    "fedprox": fedprox,
    "scaffold": scaffold,
    "fedbuff": fedbuff,
    "fedavgm": fedavgm,
    "fedadagrad": fedadagrad,
    "fedadam": fedadam,
    "fedyogi": fedyogi,
    "fedmedian": fedmedian,
    "trimmed_mean": trimmed_mean,
    "krum": krum,
    "multi_krum": multi_krum,
}
"""Recipe name -> function, as used by ``strategy.name`` in configs."""
