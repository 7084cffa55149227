"""FedProx: a proximal pull toward the global model in every local step.

Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith, "Federated Optimization in Heterogeneous
Networks", MLSys 2020, arXiv:1812.06127.

Each client minimises ``h_k(w) = f_k(w) + mu/2 ||w - w_t||^2`` from the global weights
``w_t`` (the paper's Algorithm 2), which bounds how far heterogeneous clients drift.
The aggregation and the server step are FedAvg's; ``mu = 0`` trains exactly as FedAvg.

The client half is one term of the traced local step; there is no server half, no
client state and nothing released beyond the update.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedray.features.base import Feature, LocalObjective


@dataclass(frozen=True)
class FedProx(Feature):
    """``mu/2 ||w - w_global||^2`` added to every client's local objective.

    Attributes:
        mu: The proximal coefficient, >= 0.
    """

    mu: float = 0.01

    def __post_init__(self) -> None:
        if not self.mu >= 0:
            raise ValueError(f"FedProx's mu must be >= 0, got {self.mu}")

    def local_objective(self) -> LocalObjective:
        """The proximal term ``mu``."""
        return LocalObjective(proximal=float(self.mu))
