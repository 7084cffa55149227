"""SCAFFOLD: control variates that correct client drift.

Karimireddy, Kale, Mohri, Reddi, Stich, Suresh, "SCAFFOLD: Stochastic Controlled
Averaging for Federated Learning", ICML 2020, arXiv:1910.06378 (Algorithm 1).

* Server state: the control variate ``c`` (zero at first), sent with the weights.
* Client state: its own variate ``c_i`` (zero at first), kept in its host.
* Local steps use ``g(y) - c_i + c``: the gradient offset ``o_k = c - c_i``.
* After ``K`` local steps of rate ``eta`` (option II):
  ``c_i+ = c_i - c + (x - y_i) / (K eta)``, and the client reports
  ``delta_c = c_i+ - c_i``.
* Server: the aggregation rule combines the ``delta_y`` (a uniform mean in the paper);
  then ``c <- c + |S| / N * mean_i(delta_c)``, over the participants ``S``, ``N``
  registered clients. Measurement: ``control_norm``, ``||c||``.

``delta_c`` leaves the host in the clear, so SCAFFOLD is refused under client-level DP
and secure aggregation by its own declaration; under DP-SGD it is a function of the
already private delta (post-processing) and allowed. Balanced hosts (``c_i`` stays
where the client last trained) and FedBuff (``c`` assumes synchronous rounds) are
refused the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedray import tree
from fedray.features.base import (
    ClientReport,
    Declaration,
    Feature,
    FeatureState,
    LocalObjective,
    RoundFacts,
    Trained,
)
from fedray.records import Metrics, Params


@dataclass(frozen=True)
class Scaffold(Feature):
    """SCAFFOLD's control variates: the client correction and the server's ``c``."""

    def declaration(self) -> Declaration:
        """Reports ``delta_c``; keeps ``c_i``; needs synchronous rounds."""
        return Declaration(
            releases=("each client's control-variate change",),
            from_update=True,  # delta_c is a function of the delta, c and c_i alone
            client_state=True,
            sync=True,
            keys={"strategy.name": "scaffold"},
        )

    def init(self, params: Params) -> FeatureState:
        """``c = 0``."""
        return {"control": tree.zeros_like(params)}

    def downlink(self, state: FeatureState) -> Params:
        """``c``, sent with the weights."""
        return list(state["control"])

    def local_objective(self) -> LocalObjective:
        """The gradient offset ``c - c_i``."""
        return LocalObjective(offset=True)

    def client_init(self, params: Params) -> Params:
        """``c_i = 0``."""
        return [np.zeros_like(p) for p in params]

    def offset(self, down: Params | None, state: Params, params: Params) -> Params:
        """``c - c_i``, in the model's dtypes."""
        c = down if down is not None else [np.zeros_like(p) for p in params]
        return [
            np.subtract(ci_c, ci, dtype=np.asarray(p).dtype)
            for ci_c, ci, p in zip(c, state, params, strict=True)
        ]

    def client_update(
        self, trained: Trained, down: Params | None, state: Params
    ) -> tuple[Params, Params, Params]:
        """Option II: ``delta_c = -c - delta_y / (K eta)``; ``c_i += delta_c``."""
        c = down if down is not None else [np.zeros_like(d) for d in trained.delta]
        scale = 1.0 / (max(trained.steps, 1) * trained.learning_rate)
        delta_c = [
            (-ci_c - d * scale).astype(d.dtype) for ci_c, d in zip(c, trained.delta, strict=True)
        ]
        new_state = [ci + dc for ci, dc in zip(state, delta_c, strict=True)]
        return trained.delta, delta_c, new_state

    def server_update(
        self,
        delta: Params,
        reports: Sequence[ClientReport],
        state: FeatureState,
        facts: RoundFacts,
    ) -> tuple[Params, FeatureState, Metrics]:
        """``c += |S| / N * mean(delta_c)`` (by client id); the delta is unchanged.

        >>> s = Scaffold().init([np.zeros(1, np.float32)])
        >>> reports = [ClientReport(i, 1, [np.array([2.0 * i], np.float32)]) for i in range(2)]
        >>> facts = RoundFacts(1, 4, [np.zeros(1, np.float32)])
        >>> _, s, _ = Scaffold().server_update([np.zeros(1)], reports, s, facts)
        >>> s["control"][0].tolist()  # 0 + 2/4 * mean(0, 2)
        [0.5]
        """
        if not reports:
            return delta, state, {"control_norm": tree.global_norm(state["control"])}
        frac = len(reports) / facts.num_clients
        c = [
            (c0 + frac * np.mean([r.value[i] for r in reports], axis=0)).astype(c0.dtype)
            for i, c0 in enumerate(state["control"])
        ]
        return delta, {"control": c}, {"control_norm": tree.global_norm(c)}
