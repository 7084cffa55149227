"""Strategies: an aggregator, a server optimizer, client sampling and client settings.

A strategy is data, not behaviour: a frozen dataclass composed of small objects.
Named recipes are plain functions (``fedavg()``), never subclasses.

FedAvg: McMahan et al., AISTATS 2017, arXiv:1602.05629.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedray.aggregators import Aggregator, Mean
from fedray.server_opt import ServerOptimizer, ServerSGD


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
    """

    aggregator: Aggregator = field(default_factory=Mean)
    server_optimizer: ServerOptimizer = field(default_factory=ServerSGD)
    fraction_fit: float = 1.0
    min_fit_clients: int = 1
    name: str = "custom"

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction_fit <= 1.0:
            raise ValueError(f"fraction_fit must be in (0, 1], got {self.fraction_fit}")
        if self.min_fit_clients < 1:
            raise ValueError(f"min_fit_clients must be >= 1, got {self.min_fit_clients}")

    def sample_clients(self, num_clients: int, rng: np.random.Generator) -> list[int]:
        """Sample ``max(min_fit_clients, round(fraction_fit * num_clients))`` distinct ids.

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
        k = max(self.min_fit_clients, round(self.fraction_fit * num_clients))
        k = min(k, num_clients)
        if k == num_clients:
            return list(range(num_clients))
        return sorted(int(i) for i in rng.choice(num_clients, size=k, replace=False))


def fedavg(*, fraction_fit: float = 1.0, min_fit_clients: int = 1) -> Strategy:
    """FedAvg: example-weighted mean of client deltas, server SGD with lr 1."""
    return Strategy(
        aggregator=Mean(weighting="examples"),
        server_optimizer=ServerSGD(learning_rate=1.0),
        fraction_fit=fraction_fit,
        min_fit_clients=min_fit_clients,
        name="fedavg",
    )


STRATEGIES = {"fedavg": fedavg}
"""Recipe name -> function, as used by ``strategy.name`` in configs."""
