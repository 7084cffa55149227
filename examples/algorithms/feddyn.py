"""FedDyn: dynamic regularization, written as a user would, on fedray's public API.

Acar, Zhao, Matas, Mattina, Whatmough, Saligrama, "Federated Learning Based on Dynamic
Regularization", ICLR 2021, arXiv:2111.04263 (Algorithm 1).

Each client ``k`` keeps ``g_k``, the gradient of its loss at its last local model
(zero at first), and in round ``t`` minimises, from the server model ``theta``,

    L_k(w) - <g_k, w> + alpha/2 ||w - theta||^2,

then updates ``g_k <- g_k - alpha (w_k - theta)``. The server keeps ``h`` (zero at
first); with ``P`` the participants and ``m`` the registered clients,

    h <- h - alpha/m * sum_{k in P} (w_k - theta),
    theta <- mean_{k in P} w_k - h / alpha.

In fedray's terms: a gradient offset ``-g_k`` and a proximal term ``alpha``
(the local objective), per-client state ``g_k`` (kept in its host), server state ``h``
and a change to the aggregated delta. Use it with a uniform mean, as in the paper:
``Strategy(aggregator=Mean(weighting="uniform"), features=(FedDyn(alpha=0.1),))``.

It reports nothing per client, so it composes with secure aggregation, local DP and
DP-SGD (its server half only post-processes their mean). Its declaration says the rest:
``h`` reads the aggregate as the participants' mean (so no robust rules, FedBuff, or
central DP, whose aggregate is a noised sum over the expected count) and assumes
synchronous rounds, and ``g_k`` stays in one host.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedray.features import (
    ClientReport,
    Declaration,
    Feature,
    FeatureState,
    LocalObjective,
    RoundFacts,
    Trained,
)


@dataclass(frozen=True)
class FedDyn(Feature):
    """FedDyn's dynamic regularizer (``alpha`` > 0)."""

    alpha: float = 0.1

    def declaration(self) -> Declaration:
        """Keeps ``g_k`` per client; ``h`` needs synchronous rounds and the participants' mean."""
        return Declaration(client_state=True, sync=True, mean=True)

    def local_objective(self) -> LocalObjective:
        """``- <g_k, w> + alpha/2 ||w - theta||^2``."""
        return LocalObjective(proximal=self.alpha, offset=True)

    def client_init(self, params: list[np.ndarray]) -> list[np.ndarray]:
        """``g_k = 0``."""
        return [np.zeros_like(p) for p in params]

    def offset(self, down, state, params):  # type: ignore[no-untyped-def]
        """The gradient of ``-<g_k, w>``: ``-g_k``."""
        return [-g for g in state]

    def client_update(self, trained: Trained, down, state):  # type: ignore[no-untyped-def]
        """``g_k <- g_k - alpha (w_k - theta)``; the delta is sent as it is."""
        g = [gk - self.alpha * d for gk, d in zip(state, trained.delta, strict=True)]
        return trained.delta, None, g

    def init(self, params: list[np.ndarray]) -> FeatureState:
        """``h = 0``."""
        return {"h": [np.zeros(np.shape(p), np.float64) for p in params]}

    def server_update(
        self,
        delta: list[np.ndarray],
        reports: Sequence[ClientReport],
        state: FeatureState,
        facts: RoundFacts,
    ) -> tuple[list[np.ndarray], FeatureState, dict[str, float]]:
        """``delta`` is the participants' mean; update ``h`` and subtract ``h / alpha``."""
        share = (facts.participants or 0) / facts.num_clients  # None only under central DP
        mean = [np.asarray(d, np.float64) for d in delta]
        h = [hi - self.alpha * share * d for hi, d in zip(state["h"], mean, strict=True)]
        out = [d - hi / self.alpha for d, hi in zip(mean, h, strict=True)]
        return out, {"h": h}, {"feddyn_h_norm": float(np.sqrt(sum(np.sum(x**2) for x in h)))}
