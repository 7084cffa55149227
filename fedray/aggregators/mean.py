"""Weighted mean of client deltas: the aggregation step of FedAvg.

McMahan, Moore, Ramage, Hampson, Agüera y Arcas, "Communication-Efficient Learning
of Deep Networks from Decentralized Data", AISTATS 2017, arXiv:1602.05629.

Math: ``delta = sum_k w_k * delta_k / sum_k w_k`` with ``w_k = n_k`` (examples) or
``w_k = 1`` (uniform). Client side: nothing. Server side: the sum, accumulated in
float64 in client-id order so that the result does not depend on arrival order.
Measurements: ``num_clients`` and ``total_weight``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from fedray.aggregators.base import LinearAggregator
from fedray.records import AggState, ClientUpdate, Metrics, Params, PartialSum, RoundInfo

Weighting = Literal["examples", "uniform"]


def weighted_mean(updates: Sequence[ClientUpdate], *, weighting: Weighting = "examples") -> Params:
    """Weighted average of the updates' deltas.

    Args:
        updates: At least one update; all deltas must share shapes.
        weighting: ``"examples"`` weights by ``num_examples``, ``"uniform"`` by 1.

    Returns:
        The mean delta, with the dtypes of the first update.

    Raises:
        ValueError: With no updates, or when the total weight is not positive.

    >>> u1 = ClientUpdate(0, [np.array([1.0, 0.0])], num_examples=1)
    >>> u2 = ClientUpdate(1, [np.array([4.0, 3.0])], num_examples=2)
    >>> weighted_mean([u1, u2])[0].tolist()
    [3.0, 2.0]
    >>> weighted_mean([u1, u2], weighting="uniform")[0].tolist()
    [2.5, 1.5]
    """
    if not updates:
        raise ValueError("weighted_mean needs at least one update, got 0")
    if weighting not in ("examples", "uniform"):
        raise ValueError(f"weighting must be 'examples' or 'uniform', got {weighting!r}")
    weights = [float(u.num_examples) if weighting == "examples" else 1.0 for u in updates]
    total = sum(weights)
    if total <= 0:
        raise ValueError(f"total weight must be positive, got {total} from {weights}")
    first = updates[0].delta
    acc = [np.zeros(p.shape, dtype=np.float64) for p in first]
    for w, u in sorted(zip(weights, updates, strict=True), key=lambda t: t[1].client_id):
        for a, d in zip(acc, u.delta, strict=True):
            a += w * d
    return [(a / total).astype(p.dtype, copy=False) for a, p in zip(acc, first, strict=True)]


@dataclass(frozen=True)
class Mean(LinearAggregator):
    """Weighted mean aggregator (FedAvg).

    Attributes:
        weighting: ``"examples"`` (FedAvg's ``n_k / n``) or ``"uniform"``.
    """

    weighting: Weighting = "examples"

    def init(self, params: Params) -> AggState:
        """Mean is stateless."""
        return {}

    def encode(self, update: ClientUpdate, info: RoundInfo) -> ClientUpdate:
        """Nothing happens on the client."""
        return update

    def declares(self) -> dict[str, Any]:
        """``strategy.weighting='examples'`` when it weighs by example counts, for the rules."""
        return {"strategy.weighting": "examples"} if self.weighting == "examples" else {}

    def weighs_by(self) -> str:
        """``weighting``."""
        return self.weighting

    def weight(self, update: ClientUpdate) -> float:
        """``n_k`` (examples) or 1 (uniform)."""
        return float(update.num_examples) if self.weighting == "examples" else 1.0

    def finalize(
        self, total: PartialSum, state: AggState, rng: np.random.Generator
    ) -> tuple[Params, AggState, Metrics]:
        """The mean ``sum_k w_k delta_k / sum_k w_k``.

        Raises:
            ValueError: With no client in the sum or a non-positive total weight.
        """
        count, weight = len(total.client_ids), total.weight
        if count <= 0 or not weight > 0:
            raise ValueError(f"count and weight must be > 0, got {count} and {weight}")
        delta = [np.asarray(t, np.float64) / weight for t in total.total]
        return delta, state, {"num_clients": float(count), "total_weight": float(weight)}
