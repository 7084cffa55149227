"""q-FFL: fair resource allocation, written as a user would, on fedray's public API.

Li, Sanjabi, Beirami, Smith, "Fair Resource Allocation in Federated Learning", ICLR
2020, arXiv:1905.10497 (Algorithm 2, q-FedAvg).

q-FFL minimises ``sum_k p_k F_k^(q+1) / (q+1)``, so clients with a high loss ``F_k``
weigh more (``q = 0`` is FedAvg's objective). From the server model ``w``, client ``k``
trains to ``w_k`` and, with ``L = 1 / lr`` (the paper's choice) and
``dw_k = L (w - w_k)``, computes

    Delta_k = F_k(w)^q dw_k,   h_k = q F_k(w)^(q-1) ||dw_k||^2 + L F_k(w)^q;

the server steps ``w <- w - sum_k Delta_k / sum_k h_k``. In fedray's terms: the client
half needs ``F_k(w)``, its loss before training (declared), sends ``-Delta_k`` as its
delta and reports ``h_k``; a uniform mean makes ``-sum Delta_k / |S|``, and the server
half rescales it by ``|S| / sum h_k``. Use:
``Strategy(aggregator=Mean(weighting="uniform"), features=(QFFL(q=1.0),))``.

It releases each client's loss and ``h_k`` in the clear, so the rules refuse it under
DP and secure aggregation, from its own declaration; and what it sends is a rescaled
step, not a model delta, so norm bounds on updates are refused too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedray.features import ClientReport, Declaration, Feature, FeatureState, RoundFacts, Trained


@dataclass(frozen=True)
class QFFL(Feature):
    """q-FedAvg with fairness parameter ``q`` >= 0."""

    q: float = 1.0

    def declaration(self) -> Declaration:
        """Needs and reports each client's loss."""
        return Declaration(
            releases=("each client's loss",), start_loss=True, rescales=True, mean=True
        )

    def client_update(self, trained: Trained, down, state):  # type: ignore[no-untyped-def]
        """``-Delta_k`` as the delta; ``h_k`` reported."""
        loss = float(trained.start_loss or 0.0) + 1e-10  # F_k(w) > 0
        lipschitz = 1.0 / trained.learning_rate
        dw = [-lipschitz * np.asarray(d, np.float64) for d in trained.delta]  # L (w - w_k)
        norm2 = sum(float(np.sum(x**2)) for x in dw)
        h = self.q * loss ** (self.q - 1) * norm2 + lipschitz * loss**self.q
        step = [
            (-(loss**self.q) * x).astype(d.dtype) for x, d in zip(dw, trained.delta, strict=True)
        ]
        return step, [np.array([h])], state

    def server_update(
        self,
        delta: list[np.ndarray],
        reports: Sequence[ClientReport],
        state: FeatureState,
        facts: RoundFacts,
    ) -> tuple[list[np.ndarray], FeatureState, dict[str, float]]:
        """``-sum Delta_k / sum h_k`` from the mean ``-sum Delta_k / |S|``."""
        if not reports:
            return delta, state, {}
        total_h = float(sum(r.value[0][0] for r in reports))
        scale = len(reports) / total_h
        return [np.asarray(d, np.float64) * scale for d in delta], state, {"qffl_sum_h": total_h}
