"""Norm bounding: clip every update to an L2 norm bound before the inner rule.

Sun, Kairouz, Suresh, McMahan, "Can You Really Backdoor Federated Learning?", 2019,
arXiv:1911.07963. Runs on the server (``aggregate``), so it holds even when clients do
not cooperate. Math: ``delta_k <- delta_k * min(1, max_norm / ||delta_k||)``.
Measurements: ``clipped_fraction`` plus the inner aggregator's, unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from fedray import tree
from fedray.aggregators.base import Aggregator, SameState
from fedray.aggregators.mean import Mean
from fedray.records import AggState, ClientUpdate, Metrics, Params


def clip_to(delta: Params, clip: float) -> tuple[Params, float]:
    """``delta`` scaled to L2 norm at most ``clip`` (flat, over all arrays); and its norm.

    >>> d, n = clip_to([np.array([3.0, 4.0])], 1.0)
    >>> [round(x, 6) for x in d[0].tolist()], n
    ([0.6, 0.8], 5.0)
    """
    norm = tree.global_norm(delta)
    if norm <= clip:
        return delta, norm
    return tree.scale(delta, clip / norm), norm


def clip_update(update: ClientUpdate, max_norm: float) -> tuple[ClientUpdate, bool]:
    """The update scaled down to ``max_norm`` if longer; returns (update, was_clipped).

    >>> u, clipped = clip_update(ClientUpdate(0, [np.array([3.0, 4.0])], 1), 1.0)
    >>> u.delta[0].tolist(), clipped
    ([0.6000000000000001, 0.8], True)
    """
    delta, norm = clip_to(update.delta, max_norm)
    if norm <= max_norm:
        return update, False
    return replace(update, delta=delta), True


@dataclass(frozen=True)
class NormBound(SameState):
    """Wraps any aggregator; clips each update to ``max_norm`` first.

    Attributes:
        inner: The aggregator that receives the clipped updates.
        max_norm: L2 bound, > 0.
    """

    inner: Aggregator = field(default_factory=Mean)
    max_norm: float = 1.0

    def __post_init__(self) -> None:
        if not self.max_norm > 0:
            raise ValueError(f"max_norm must be > 0, got {self.max_norm}")

    def declares(self) -> dict[str, Any]:
        """``strategy.norm_bound``, for the rules."""
        return {"strategy.norm_bound": self.max_norm}

    def aggregate(
        self, updates: Sequence[ClientUpdate], state: AggState, rng: np.random.Generator
    ) -> tuple[Params, AggState, Metrics]:
        """Clip, then aggregate with ``inner``."""
        clipped = [clip_update(u, self.max_norm) for u in updates]
        delta, state, meas = self.inner.aggregate([u for u, _ in clipped], state, rng)
        frac = sum(c for _, c in clipped) / max(1, len(clipped))
        return delta, state, {**meas, "clipped_fraction": float(frac)}
