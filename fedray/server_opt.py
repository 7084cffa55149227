"""Server optimizers: how the aggregated delta moves the global model.

Reddi, Charles, Zaheer, Garrett, Rush, Konečný, Kumar, McMahan, "Adaptive Federated
Optimization", ICLR 2021, arXiv:2003.00295. FedAvg is server SGD with learning rate 1:
``params <- params + lr * delta``, where ``delta`` is the aggregated client delta
(a pseudo-gradient with its sign flipped).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from fedray.records import AggState, Params


@runtime_checkable
class ServerOptimizer(Protocol):
    """A pure update rule ``apply(params, delta, state) -> (params, state)``."""

    def init(self, params: Params) -> AggState:
        """Return the initial optimizer state."""
        ...

    def apply(self, params: Params, delta: Params, state: AggState) -> tuple[Params, AggState]:
        """Return the new global parameters and state."""
        ...


@dataclass(frozen=True)
class ServerSGD:
    """Plain server SGD: ``params + learning_rate * delta`` (FedAvg when lr = 1).

    >>> import numpy as np
    >>> opt = ServerSGD(learning_rate=0.5)
    >>> new, _ = opt.apply([np.array([1.0])], [np.array([2.0])], opt.init([]))
    >>> new[0].tolist()
    [2.0]
    """

    learning_rate: float = 1.0

    def __post_init__(self) -> None:
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")

    def init(self, params: Params) -> AggState:
        """SGD has no state."""
        return {}

    def apply(self, params: Params, delta: Params, state: AggState) -> tuple[Params, AggState]:
        """One server step."""
        new = [
            (p + self.learning_rate * d).astype(p.dtype, copy=False)
            for p, d in zip(params, delta, strict=True)
        ]
        return new, state
