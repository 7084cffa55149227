"""What a differential-privacy mechanism declares about itself, for the ledger and the rules.

A run is private because its composed strategy holds a DP mechanism, not because its
config has a section: :class:`~fedray.aggregators.CentralDP`,
:class:`~fedray.aggregators.LocalDP`, :class:`~fedray.aggregators.DistributedDP` (in a
strategy's aggregator chain) and :class:`~fedray.privacy.DPSGD` (its clients' training)
each declare

* ``privacy_mode``: ``"central"``, ``"local"``, ``"distributed"`` or ``"dpsgd"``, the
  name the combination rules (:mod:`fedray.strategy.rules`) judge it by;
* ``accountant(facts)``: its privacy ledger, built from its own parameters and the
  run's :class:`RunFacts` (δ, the sampling, the model's size, the shard sizes).

A configured run and the same strategy composed by hand are therefore charged by the
same ledger. Layer 1: no Ray, no TensorFlow.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class RunFacts:
    """What a ledger needs to know about the run besides the mechanism's own parameters.

    Attributes:
        delta: δ of the (ε, δ) guarantee.
        sampling_rate: q, each client's chance to take part in a round.
        sampling: ``"poisson"`` or ``"fixed"`` (the strategy's sampling).
        population: N, the registered clients.
        max_epsilon: Stop before a round that would spend more than this ε.
        planned_rounds: The rounds the run was planned (and calibrated) for.
        dim: The model's number of parameters (distributed DP's ε depends on it).
        batch_size: Local batch size B (DP-SGD).
        local_epochs: Local epochs E (DP-SGD).
        examples: Each client's shard size n_k (DP-SGD only, where it is public).
    """

    delta: float
    sampling_rate: float = 1.0
    sampling: str = "poisson"
    population: int | None = None
    max_epsilon: float | None = None
    planned_rounds: int | None = None
    dim: int | None = None
    batch_size: int | None = None
    local_epochs: int | None = None
    examples: Mapping[int, int] = field(default_factory=dict)


@runtime_checkable
class DPMechanism(Protocol):
    """A differential-privacy mechanism: its mode, its trust model and its ledger."""

    @property
    def privacy_mode(self) -> str:
        """``"central"``, ``"local"``, ``"distributed"`` or ``"dpsgd"``."""
        ...

    def accountant(self, facts: RunFacts) -> Any:
        """The ledger that charges this mechanism's releases in a run with ``facts``."""
        ...


def describe(mechanism: Any) -> str:
    """A mechanism as the one-line messages name it, e.g. ``CentralDP(noise_multiplier=1)``.

    >>> from fedray.aggregators import LocalDP
    >>> describe(LocalDP(noise_multiplier=2.0))
    'LocalDP(noise_multiplier=2)'
    """
    return f"{type(mechanism).__name__}(noise_multiplier={mechanism.noise_multiplier:g})"
