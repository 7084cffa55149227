"""Byzantine-robust aggregation rules (unweighted: a malicious client could lie about n_k).

* ``Median``: coordinate-wise median; Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust
  Distributed Learning: Towards Optimal Statistical Rates", ICML 2018, arXiv:1803.01498.
* ``TrimmedMean``: per coordinate, drop the ``floor(beta * n)`` largest and smallest
  values and average the rest (same paper).
* ``Krum``: Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with
  Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017. Each update is scored
  by the sum of squared distances to its ``n - f - 2`` nearest others; Krum returns the
  best-scored update, Multi-Krum the mean of the ``m`` best. Needs ``n >= 2f + 3``.

Client side: nothing. Server side: the rule over all received updates (no streaming:
each rule needs every update). Measurements: ``num_clients`` and, for Krum, the ids
selected.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedray.records import AggState, ClientUpdate, Metrics, Params, RoundInfo


def _stack(updates: Sequence[ClientUpdate]) -> list[np.ndarray]:
    """Per weight, the clients' deltas stacked along axis 0 (client-id order)."""
    ordered = sorted(updates, key=lambda u: u.client_id)
    return [np.stack([u.delta[i] for u in ordered]) for i in range(len(ordered[0].delta))]


def _need(updates: Sequence[ClientUpdate], minimum: int, rule: str, why: str) -> None:
    if len(updates) < minimum:
        raise ValueError(
            f"{rule} needs at least {minimum} client updates ({why}), got {len(updates)}"
        )


class _Stateless:
    def init(self, params: Params) -> AggState:
        """No state."""
        return {}

    def encode(self, update: ClientUpdate, info: RoundInfo) -> ClientUpdate:
        """Nothing happens on the client."""
        return update


@dataclass(frozen=True)
class Median(_Stateless):
    """Coordinate-wise median of the deltas.

    >>> ups = [ClientUpdate(i, [np.array([v])], 1) for i, v in enumerate([1.0, 2.0, 100.0])]
    >>> float(Median().aggregate(ups, {}, np.random.default_rng(0))[0][0][0])
    2.0
    """

    def declares(self) -> dict[str, Any]:
        """The recipe it stands for, for the rules."""
        return {"strategy.name": "fedmedian"}

    def aggregate(
        self, updates: Sequence[ClientUpdate], state: AggState, rng: np.random.Generator
    ) -> tuple[Params, AggState, Metrics]:
        """Median per coordinate (the mean of the two middle values for even n)."""
        _need(updates, 1, "fedmedian", "a median of nothing is undefined")
        delta = [np.median(s, axis=0).astype(s.dtype) for s in _stack(updates)]
        return delta, state, {"num_clients": float(len(updates))}


@dataclass(frozen=True)
class TrimmedMean(_Stateless):
    """Coordinate-wise beta-trimmed mean.

    Attributes:
        beta: Fraction trimmed from each end, in [0, 0.5).

    >>> values = [-50.0, 1.0, 2.0, 3.0, 90.0]
    >>> ups = [ClientUpdate(i, [np.array([v])], 1) for i, v in enumerate(values)]
    >>> float(TrimmedMean(beta=0.2).aggregate(ups, {}, np.random.default_rng(0))[0][0][0])
    2.0
    """

    beta: float = 0.1

    def __post_init__(self) -> None:
        if not 0 <= self.beta < 0.5:
            raise ValueError(f"trimmed_mean beta must be in [0, 0.5), got {self.beta}")

    def declares(self) -> dict[str, Any]:
        """The recipe it stands for, for the rules."""
        return {"strategy.name": "trimmed_mean"}

    def aggregate(
        self, updates: Sequence[ClientUpdate], state: AggState, rng: np.random.Generator
    ) -> tuple[Params, AggState, Metrics]:
        """Sort each coordinate, drop ``floor(beta * n)`` at each end, average the rest."""
        _need(updates, 1, "trimmed_mean", "nothing to average")
        n = len(updates)
        k = math.floor(self.beta * n)
        delta = [
            np.sort(s, axis=0)[k : n - k].mean(axis=0).astype(s.dtype) for s in _stack(updates)
        ]
        return delta, state, {"num_clients": float(n), "trimmed_per_side": float(k)}


@dataclass(frozen=True)
class Krum(_Stateless):
    """Krum (``num_selected=1``) and Multi-Krum (``num_selected=m``).

    Attributes:
        num_byzantine: ``f``, the number of Byzantine clients tolerated.
        num_selected: ``m``, how many best-scored updates are averaged; ``None`` means
            ``n - f`` (Multi-Krum's usual choice); 1 is plain Krum.
    """

    num_byzantine: int = 0
    num_selected: int | None = 1

    def __post_init__(self) -> None:
        if self.num_byzantine < 0:
            raise ValueError(f"num_byzantine must be >= 0, got {self.num_byzantine}")
        if self.num_selected is not None and self.num_selected < 1:
            raise ValueError(f"num_selected must be >= 1, got {self.num_selected}")

    def scores(self, updates: Sequence[ClientUpdate]) -> np.ndarray:
        """Krum score of each update (client-id order)."""
        n, f = len(updates), self.num_byzantine
        _need(updates, 2 * f + 3, "krum", f"n >= 2f + 3 with f={f}")
        flat = np.stack(
            [
                np.concatenate([d.ravel() for d in u.delta]).astype(np.float64)
                for u in sorted(updates, key=lambda u: u.client_id)
            ]
        )
        sq = np.sum(flat**2, axis=1)
        dist = np.maximum(sq[:, None] + sq[None, :] - 2 * flat @ flat.T, 0.0)
        closest = n - f - 2
        return np.array(
            [np.sort(np.delete(dist[i], i))[:closest].sum() for i in range(n)], dtype=np.float64
        )

    def declares(self) -> dict[str, Any]:
        """The recipe it stands for, for the rules."""
        return {"strategy.name": "krum"}

    def aggregate(
        self, updates: Sequence[ClientUpdate], state: AggState, rng: np.random.Generator
    ) -> tuple[Params, AggState, Metrics]:
        """Average the ``m`` updates with the lowest scores (ties: lowest client id)."""
        ordered = sorted(updates, key=lambda u: u.client_id)
        scores = self.scores(ordered)
        m = self.num_selected or len(ordered) - self.num_byzantine
        m = min(m, len(ordered))
        chosen = np.argsort(scores, kind="stable")[:m]
        stacks = _stack(ordered)
        delta = [s[chosen].mean(axis=0).astype(s.dtype) for s in stacks]
        selected = sorted(ordered[i].client_id for i in chosen)
        meas = {"num_clients": float(len(ordered)), "num_selected": float(m)}
        meas.update({f"selected/{cid}": 1.0 for cid in selected})
        return delta, state, meas
