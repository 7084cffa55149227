"""Staleness weighting for asynchronous, buffered aggregation (FedBuff).

Nguyen, Malik, Zhan, Yousefpour, Rabbat, Malek, Huba, "Federated Learning with Buffered
Asynchronous Aggregation", AISTATS 2022, arXiv:2106.06639. An update computed from a
model that is ``s`` server steps old is scaled by ``1 / sqrt(1 + s)`` before the inner
aggregator sees it. The asynchronous driver writes ``s`` into
``update.protocol["staleness"]``. Measurements: the inner's, plus staleness mean and max.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from fedray import tree
from fedray.aggregators.base import Aggregator, SameState
from fedray.aggregators.mean import Mean
from fedray.records import AggState, ClientUpdate, Metrics, Params


def staleness_weight(staleness: float) -> float:
    """``1 / sqrt(1 + s)``.

    >>> [round(staleness_weight(s), 4) for s in (0, 1, 3)]
    [1.0, 0.7071, 0.5]
    """
    if staleness < 0:
        raise ValueError(f"staleness must be >= 0, got {staleness}")
    return 1.0 / math.sqrt(1.0 + staleness)


@dataclass(frozen=True)
class StalenessWeighted(SameState):
    """Scales each delta by ``staleness_weight(update.protocol["staleness"])``, then ``inner``."""

    inner: Aggregator = field(default_factory=lambda: Mean(weighting="uniform"))

    def declares(self) -> dict[str, Any]:
        """FedBuff's, for the rules."""
        return {"strategy.name": "fedbuff"}

    def aggregate(
        self, updates: Sequence[ClientUpdate], state: AggState, rng: np.random.Generator
    ) -> tuple[Params, AggState, Metrics]:
        """Down-weight stale updates, then aggregate with ``inner``."""
        stale = [float(u.protocol.get("staleness", 0.0)) for u in updates]
        scaled = [
            replace(u, delta=tree.scale(u.delta, staleness_weight(s)))
            for u, s in zip(updates, stale, strict=True)
        ]
        delta, state, meas = self.inner.aggregate(scaled, state, rng)
        return (
            delta,
            state,
            {
                **meas,
                "staleness_mean": float(np.mean(stale)),
                "staleness_max": float(np.max(stale)),
            },
        )
