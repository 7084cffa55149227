"""FedNova: normalized averaging, written as a user would, on fedray's public API.

Wang, Liu, Liang, Joshi, Poor, "Tackling the Objective Inconsistency Problem in
Heterogeneous Federated Optimization", NeurIPS 2020, arXiv:2007.07481 (Section 4).

Clients run different numbers of local steps ``tau_k`` (different data sizes,
stragglers), and FedAvg then optimizes a skewed objective. FedNova normalizes each
client's update by its steps (for plain local SGD, ``a_k = tau_k``) and rescales the
average by the effective step count:

    theta <- theta + tau_eff * sum_k p_k delta_k / tau_k,   tau_eff = sum_k p_k tau_k,

with ``p_k = n_k / sum n`` over the participants. In fedray's terms: the client half
divides its delta by its step count and reports the count; an example-weighted mean
makes ``sum_k p_k delta_k / tau_k``; the server half multiplies it by ``tau_eff``. Use:
``Strategy(aggregator=Mean(weighting="examples"), features=(FedNova(),))``.

The step count is released in the clear (it reveals how much data a client holds), so
the rules refuse FedNova under DP and secure aggregation, from its declaration; it also
declares that it sends a rescaled step (no norm bounds) and that its server half reads
the aggregate as the participants' mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedray.features import ClientReport, Declaration, Feature, FeatureState, RoundFacts, Trained


@dataclass(frozen=True)
class FedNova(Feature):
    """FedNova's normalized averaging (for local SGD: ``a_k = tau_k``)."""

    def declaration(self) -> Declaration:
        """Reports each client's local step count."""
        return Declaration(releases=("each client's local step count",), rescales=True, mean=True)

    def client_update(self, trained: Trained, down, state):  # type: ignore[no-untyped-def]
        """``delta_k / tau_k``, and ``tau_k`` reported."""
        tau = max(trained.steps, 1)
        normalized = [(d / tau).astype(d.dtype) for d in trained.delta]
        return normalized, [np.array([float(tau)])], state

    def server_update(
        self,
        delta: list[np.ndarray],
        reports: Sequence[ClientReport],
        state: FeatureState,
        facts: RoundFacts,
    ) -> tuple[list[np.ndarray], FeatureState, dict[str, float]]:
        """``tau_eff * delta``, ``tau_eff = sum_k n_k tau_k / sum_k n_k``."""
        if not reports:
            return delta, state, {}
        n = np.array([r.num_examples for r in reports], np.float64)
        tau = np.array([float(r.value[0][0]) for r in reports])
        tau_eff = float(n @ tau / n.sum())
        return [np.asarray(d, np.float64) * tau_eff for d in delta], state, {"tau_eff": tau_eff}
