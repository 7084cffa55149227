"""Per-client ε of example-level DP-SGD run inside the clients.

Abadi et al., "Deep Learning with Differential Privacy", CCS 2016 (arXiv:1607.00133),
with Poisson-sampled batches padded to a fixed cap so that the traced step has one
shape; the chance of a truncated batch is spent from δ. Each client's steps compose
(``dp-accounting``, RDP/PLD). Layer 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from fedray.privacy.accounting import dpfedavg_epsilon
from fedray.privacy.ledgers import _PerClientLedger
from fedray.privacy.mechanism import RunFacts
from fedray.records import check_gaussian


def poisson_batch_cap(batch_size: int, tail: float = 1e-12) -> int:
    """The padded size of DP-SGD's Poisson batches: P(batch > cap) <= ``tail``.

    A Binomial(n, B/n) batch is dominated by Poisson(B) in its upper tail, so one cap
    serves every shard size.

    >>> poisson_batch_cap(16), poisson_batch_cap(256)
    (52, 377)
    """
    from scipy.stats import poisson

    return int(poisson.isf(tail, batch_size)) + 1


def truncation_probability(examples: int, batch_size: int, cap: int) -> float:
    """P(a Binomial(n, B/n) Poisson batch exceeds ``cap``): it is truncated then.

    A truncated batch can drop one example for another (sensitivity 2C), so this
    probability, summed over the steps, is added to δ.
    """
    from scipy.stats import binom

    q = min(1.0, batch_size / examples)
    return float(binom.sf(cap, examples, q))


@dataclass
class DPSGDAccountant(_PerClientLedger):
    """Per-client ε of example-level DP-SGD inside the clients.

    Client k's every local step is ``PoissonSampled(B / n_k, Gaussian(z))``; it runs
    ``E ceil(n_k / B)`` steps per round it takes part in, and its steps compose. The
    batches are padded to ``cap`` (:func:`poisson_batch_cap`); the chance that a batch
    is larger, and truncated, is spent from δ: ε is reported at δ minus it.

    Attributes:
        noise_multiplier: z.
        delta: δ per client.
        batch_size: B, the expected Poisson batch size.
        local_epochs: E.
        examples: n_k per client id.
        max_epsilon: Stop before any client's ε would exceed this.
        participations: Rounds each client released an update in (checkpointed).
        cap: The padded batch size of the hosts (None: :func:`poisson_batch_cap`).
    """

    noise_multiplier: float
    delta: float
    batch_size: int
    local_epochs: int
    examples: dict[int, int]
    max_epsilon: float | None = None
    participations: dict[int, int] = field(default_factory=dict)
    rounds: int = 0
    cap: int | None = None
    planned_rounds: int | None = None

    def header(self) -> dict[str, Any]:
        """The ledger's fixed parameters, JSON-able (a journal's session line)."""
        return {
            "mode": "dpsgd",
            "noise_multiplier": self.noise_multiplier,
            "delta": self.delta,
            "batch_size": self.batch_size,
            "local_epochs": self.local_epochs,
            "examples": {str(c): n for c, n in self.examples.items()},
            "max_epsilon": self.max_epsilon,
            "cap": self.cap,
            "planned_rounds": self.planned_rounds,
        }

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> DPSGDAccountant:
        """The empty ledger a :meth:`header` describes."""
        rest = {k: v for k, v in header.items() if k not in ("mode", "examples")}
        return cls(examples={int(c): int(n) for c, n in header["examples"].items()}, **rest)

    def _steps(self, cid: int, participations: int) -> int:
        n = self.examples[cid]
        return participations * self.local_epochs * math.ceil(n / self.batch_size)

    def truncation_delta(self, cid: int, participations: int) -> float:
        """The δ spent on batch truncation by ``participations`` rounds of ``cid``."""
        n = self.examples[cid]
        cap = self.cap if self.cap is not None else poisson_batch_cap(self.batch_size)
        return self._steps(cid, participations) * truncation_probability(n, self.batch_size, cap)

    def client_epsilon(self, cid: int, participations: int) -> float:
        """ε of client ``cid`` after ``participations`` rounds of local DP-SGD."""
        if participations <= 0:
            return 0.0
        n = self.examples[cid]
        q = min(1.0, self.batch_size / n)
        steps = self._steps(cid, participations)
        delta = self.delta - self.truncation_delta(cid, participations)
        if delta <= 0:
            return math.inf
        return dpfedavg_epsilon(self.noise_multiplier, q, steps, delta)  # memoised

    def epsilon(self) -> float:
        """The worst client's ε so far."""
        return max((self.client_epsilon(c, k) for c, k in self.participations.items()), default=0.0)

    def allows_next_round(self) -> bool:
        """Whether every client could take part once more within ``max_epsilon``."""
        if self.max_epsilon is None:
            return True
        worst = max(
            self.client_epsilon(c, self.participations.get(c, 0) + 1) for c in self.examples
        )
        return worst <= self.max_epsilon

    def report(self) -> dict[str, Any]:
        """Per-client ε (the worst is the reported ε) for ``summary.json``."""
        per_client = {c: self.client_epsilon(c, k) for c, k in sorted(self.participations.items())}
        return {
            "mode": "dpsgd",
            "epsilon": self.epsilon(),
            "accountant": "RDP",
            "epsilon_per_client": per_client,
            "delta": self.delta,
            "delta_truncation": max(
                (self.truncation_delta(c, k) for c, k in self.participations.items()),
                default=0.0,
            ),
            "noise_multiplier": self.noise_multiplier,
            "sampling_rate": {c: min(1.0, self.batch_size / n) for c, n in self.examples.items()},
            "rounds": self.rounds,
            "adjacency": "add/remove one example of a client",
        }


@dataclass(frozen=True)
class DPSGD:
    """Example-level DP-SGD inside each client (Abadi et al., CCS 2016, arXiv:1607.00133).

    Every local step draws a Poisson batch (each example with probability B / n),
    clips each per-example gradient to L2 norm ``clip``, adds N(0, (z clip)^2) to the
    sum and divides by the expected batch size B.

    Attributes:
        noise_multiplier: z >= 0.
        clip: Per-example L2 clip norm C > 0.
        noise_seed: None draws batches and noise from ``secrets`` (private); an int makes
            runs reproducible, and anyone who knows it can remove the noise.
    """

    noise_multiplier: float
    clip: float = 1.0
    noise_seed: int | None = None
    privacy_mode: ClassVar[str] = "dpsgd"

    def __post_init__(self) -> None:
        check_gaussian(self.noise_multiplier, self.clip)

    def accountant(self, facts: RunFacts) -> Any:
        """DP-SGD's ledger: each client's Poisson-sampled steps, from its shard size.

        Raises:
            ValueError: ``facts`` lacks the batch size, the epochs or the shard sizes.
        """
        if facts.batch_size is None or facts.local_epochs is None or not facts.examples:
            raise ValueError("DP-SGD's ledger needs the batch size, the epochs and n_k")
        return DPSGDAccountant(
            noise_multiplier=self.noise_multiplier,
            delta=facts.delta,
            batch_size=facts.batch_size,
            local_epochs=facts.local_epochs,
            examples=dict(facts.examples),
            max_epsilon=facts.max_epsilon,
            planned_rounds=facts.planned_rounds,
        )
