"""SCAFFOLD's server side: the control variate and its broadcast.

Karimireddy, Kale, Mohri, Reddi, Stich, Suresh, "SCAFFOLD: Stochastic Controlled
Averaging for Federated Learning", ICML 2020, arXiv:1910.06378 (Algorithm 1).

Client side (in the hosts, ``ClientOptions(control_variates=True)``): local steps use
``g(y) - c_i + c``; afterwards ``c_i+ = c_i - c + (x - y_i) / (K * lr)`` (option II) and
the client sends ``delta_y`` and ``delta_c = c_i+ - c_i``. Server side (here): the
inner aggregator combines ``delta_y`` (uniform mean in the paper) and
``c <- c + |S| / N * mean(delta_c)``. The new ``c`` is broadcast to clients through
its ``broadcast`` hook. Measurements: the inner's, plus ``control_norm``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fedray import tree
from fedray.aggregators.base import Aggregator, client_settings
from fedray.aggregators.mean import Mean
from fedray.records import AggState, ClientUpdate, Metrics, Params, RoundInfo


@dataclass(frozen=True)
class Scaffold:
    """Wraps the update aggregator; keeps and broadcasts the server control variate.

    Attributes:
        inner: Aggregates ``delta_y`` (default: uniform mean, as in the paper).
        num_clients: ``N``, the number of registered clients.
    """

    inner: Aggregator = field(default_factory=lambda: Mean(weighting="uniform"))
    num_clients: int = 1

    def __post_init__(self) -> None:
        if self.num_clients < 1:
            raise ValueError(f"num_clients must be >= 1, got {self.num_clients}")

    def init(self, params: Params) -> AggState:
        """``c = 0``, broadcast with the initial model."""
        c = tree.zeros_like(params)
        return {"inner": self.inner.init(params), "control": c}

    def encode(self, update: ClientUpdate, info: RoundInfo) -> ClientUpdate:
        """Delegates to the inner aggregator."""
        return self.inner.encode(update, info)

    def client_settings(self, state: AggState) -> dict[str, float]:
        """The inner aggregator's (its state is under ``"inner"``)."""
        return client_settings(self.inner, state["inner"])

    def broadcast(self, state: AggState) -> dict[str, Params]:
        """The server control variate ``c``, sent with the weights."""
        return {"control": state["control"]}

    def aggregate(
        self, updates: Sequence[ClientUpdate], state: AggState, rng: np.random.Generator
    ) -> tuple[Params, AggState, Metrics]:
        """Inner aggregate of the deltas; ``c += |S|/N * mean(delta_c)``.

        >>> agg = Scaffold(num_clients=4)
        >>> s = agg.init([np.zeros(1, np.float32)])
        >>> ups = [ClientUpdate(i, [np.array([1.0], np.float32)], 1,
        ...                     extras={"delta_c": [np.array([2.0 * i], np.float32)]})
        ...        for i in range(2)]
        >>> _, s, _ = agg.aggregate(ups, s, np.random.default_rng(0))
        >>> s["control"][0].tolist()  # 0 + 2/4 * mean(0, 2)
        [0.5]
        """
        missing = [u.client_id for u in updates if "delta_c" not in u.extras]
        if missing:
            raise ValueError(
                f"SCAFFOLD needs delta_c from every client; clients {missing} sent none "
                "(run them with ClientOptions(control_variates=True))"
            )
        delta, inner_state, meas = self.inner.aggregate(updates, state["inner"], rng)
        frac = len(updates) / self.num_clients
        updates = sorted(updates, key=lambda u: u.client_id)  # arrival order must not matter
        c = [
            (c0 + frac * np.mean([u.extras["delta_c"][i] for u in updates], axis=0)).astype(
                c0.dtype
            )
            for i, c0 in enumerate(state["control"])
        ]
        new_state = {"inner": inner_state, "control": c}
        return delta, new_state, {**meas, "control_norm": tree.global_norm(c)}
