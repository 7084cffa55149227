"""Server optimizers: how the aggregated delta moves the global model.

Reddi, Charles, Zaheer, Garrett, Rush, Konečný, Kumar, McMahan, "Adaptive Federated
Optimization", ICLR 2021, arXiv:2003.00295. FedAvg is server SGD with learning rate 1:
``params <- params + lr * delta``, where ``delta`` is the aggregated client delta
(a pseudo-gradient with its sign flipped).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import numpy as np

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


def _zeros(params: Params) -> Params:
    return [np.zeros(p.shape, dtype=np.float64) for p in params]


@dataclass(frozen=True)
class ServerMomentum:
    """FedAvgM: server SGD with heavy-ball momentum.

    Hsu, Qi, Brown, "Measuring the Effects of Non-Identical Data Distribution for
    Federated Visual Classification", 2019, arXiv:1909.06335.
    ``v <- momentum * v + delta``; ``params <- params + learning_rate * v``.

    >>> opt = ServerMomentum(learning_rate=1.0, momentum=0.5)
    >>> s = opt.init([np.zeros(1)])
    >>> p, s = opt.apply([np.zeros(1)], [np.ones(1)], s)
    >>> p, s = opt.apply(p, [np.ones(1)], s)
    >>> float(p[0][0])  # 1 + (0.5 * 1 + 1)
    2.5
    """

    learning_rate: float = 1.0
    momentum: float = 0.9

    def __post_init__(self) -> None:
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")

    def init(self, params: Params) -> AggState:
        """Zero velocity."""
        return {"velocity": _zeros(params)}

    def apply(self, params: Params, delta: Params, state: AggState) -> tuple[Params, AggState]:
        """One server step with momentum."""
        velocity = [self.momentum * v + d for v, d in zip(state["velocity"], delta, strict=True)]
        new = [
            (p + self.learning_rate * v).astype(p.dtype, copy=False)
            for p, v in zip(params, velocity, strict=True)
        ]
        return new, {"velocity": velocity}


Adaptivity = Literal["adagrad", "adam", "yogi"]


@dataclass(frozen=True)
class ServerAdaptive:
    """FedAdagrad, FedAdam and FedYogi: Algorithm 2 of Reddi et al. (ICLR 2021).

    With the aggregated delta ``d`` (a negated pseudo-gradient)::

        m <- beta1 * m + (1 - beta1) * d
        v <- v + d^2                                    (adagrad)
        v <- beta2 * v + (1 - beta2) * d^2              (adam)
        v <- v - (1 - beta2) * d^2 * sign(v - d^2)      (yogi)
        params <- params + learning_rate * m / (sqrt(v) + tau)

    State starts at ``m = 0`` and ``v = tau^2`` as in the paper (no bias correction).
    Defaults: ``beta1 = 0.9``, ``beta2 = 0.99``, ``tau = 1e-3``, server learning rate
    ``1e-2`` (the paper tunes both per task; ``tau`` controls adaptivity).

    >>> opt = ServerAdaptive("adam", learning_rate=0.1, beta1=0.5, beta2=0.5, tau=0.0)
    >>> p, s = opt.apply([np.zeros(1)], [np.array([2.0])], opt.init([np.zeros(1)]))
    >>> float(p[0][0])  # m = 1, v = 2, 0.1 * 1 / sqrt(2)
    0.07071067811865475
    """

    adaptivity: Adaptivity = "adam"
    learning_rate: float = 1e-2
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        if self.adaptivity not in ("adagrad", "adam", "yogi"):
            raise ValueError(
                f"adaptivity must be 'adagrad', 'adam' or 'yogi', got {self.adaptivity!r}"
            )
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if self.tau < 0:
            raise ValueError(f"tau must be >= 0, got {self.tau}")

    def init(self, params: Params) -> AggState:
        """``m = 0``, ``v = tau^2``."""
        return {
            "m": _zeros(params),
            "v": [np.full(p.shape, self.tau**2, dtype=np.float64) for p in params],
        }

    def apply(self, params: Params, delta: Params, state: AggState) -> tuple[Params, AggState]:
        """One adaptive server step."""
        m_new, v_new, out = [], [], []
        for p, d, m, v in zip(params, delta, state["m"], state["v"], strict=True):
            d = d.astype(np.float64)
            m = self.beta1 * m + (1 - self.beta1) * d
            d2 = d * d
            if self.adaptivity == "adagrad":
                v = v + d2
            elif self.adaptivity == "adam":
                v = self.beta2 * v + (1 - self.beta2) * d2
            else:
                v = v - (1 - self.beta2) * d2 * np.sign(v - d2)
            out.append((p + self.learning_rate * m / (np.sqrt(v) + self.tau)).astype(p.dtype))
            m_new.append(m)
            v_new.append(v)
        return out, {"m": m_new, "v": v_new}
