"""The privacy ledgers: the running ε of a run, from the releases that actually ran.

* :class:`DPFedAvgAccountant`: client-level DP-FedAvg (McMahan et al., ICLR 2018,
  arXiv:1710.06963), the rounds composed by ``dp-accounting``
  (:func:`~fedray.privacy.accounting.compose_epsilon`).
* :class:`LocalDPAccountant`: local DP, each client's own releases composed without
  amplification, converted by the analytic Gaussian mechanism (Balle & Wang, ICML
  2018, arXiv:1805.06530).
* :class:`DistributedDPAccountant`: distributed discrete DP inside secure aggregation
  (Skellam, arXiv:2110.04995; distributed discrete Gaussian, arXiv:2102.06387), each
  client's own releases composed in RDP.

Every ledger has ``allows_next_round``, ``record(participants)``, ``epsilon``,
``state`` and ``restore`` (the loop's :class:`~fedray.loop.PrivacyLedger`). Layer 1.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from fedray.privacy.accounting import (
    RoundEvent,
    Sampling,
    compose_epsilon,
    split_noise,
)
from fedray.privacy.distributed import DistributedPlan, distributed_epsilon


@dataclass
class DPFedAvgAccountant:
    """The running privacy cost of a DP-FedAvg run: the rounds that actually ran.

    The ledger keeps the list of round events it composed (z_Δ, the count's
    multiplier, q, sampling, N), run-length encoded, so a resumed or extended run
    whose noise differs from the first part is priced as it ran, never re-priced at
    today's settings.

    Attributes:
        noise_multiplier: z of the rounds to come (total, including the count's share
            when adaptive).
        sampling_rate: q.
        delta: δ.
        sampling: ``"poisson"`` or ``"fixed"``.
        population: N.
        count_noise_multiplier: 2σ_b with adaptive clipping (then the update part is
            ``split_noise(z, σ_b)``), else None.
        max_epsilon: Stop before a round would exceed this ε.
        history: ``[(event, rounds), ...]`` of the rounds spent (checkpointed).
    """

    noise_multiplier: float
    sampling_rate: float
    delta: float
    sampling: Sampling = "poisson"
    population: int | None = None
    count_noise_multiplier: float | None = None
    max_epsilon: float | None = None
    history: list[tuple[RoundEvent, int]] = field(default_factory=list)
    planned_rounds: int | None = None

    @property
    def event(self) -> RoundEvent:
        """The event of the next round, at the current settings."""
        z = self.noise_multiplier
        count = self.count_noise_multiplier
        if count is not None:
            z = split_noise(z, count / 2)
        return RoundEvent(z, count, self.sampling_rate, self.sampling, self.population)

    @property
    def rounds(self) -> int:
        """Rounds spent so far."""
        return sum(n for _, n in self.history)

    @rounds.setter
    def rounds(self, value: int) -> None:
        self.history = [(self.event, int(value))] if value > 0 else []

    def _spend(self, event: RoundEvent, n: int = 1) -> None:
        if self.history and self.history[-1][0] == event:
            self.history[-1] = (event, self.history[-1][1] + n)
        else:
            self.history.append((event, n))

    def epsilon(self, rounds: int | None = None, method: Literal["rdp", "pld"] = "rdp") -> float:
        """ε of the rounds spent, or after ``rounds`` rounds in all (the rest at today's z)."""
        runs = list(self.history)
        extra = 0 if rounds is None else rounds - self.rounds
        if extra < 0:
            raise ValueError(f"{self.rounds} rounds are already spent; cannot price {rounds}")
        if extra:
            runs.append((self.event, extra))
        return compose_epsilon(runs, self.delta, method=method)  # memoised

    def allows_next_round(self) -> bool:
        """Whether one more round stays within ``max_epsilon``."""
        return self.max_epsilon is None or self.epsilon(self.rounds + 1) <= self.max_epsilon

    def charge(self, participants: Sequence[int]) -> dict[str, Any]:
        """What one more round costs: its event (the same whoever takes part; JSON-able)."""
        return {"event": self.event.to_json()}

    def apply(self, charge: Mapping[str, Any]) -> None:
        """Spend a :meth:`charge` (a journal replays them on resume)."""
        self._spend(RoundEvent.from_json(charge["event"]))

    def record(
        self, participants: Sequence[int], *, server_round: int = 0, attempt: int = 0
    ) -> float:
        """Spend one round (it counts even with no participants); returns ε (RDP)."""
        self.apply(self.charge(participants))
        return self.epsilon()

    def lost_attempts(self, server_round: int) -> int:
        """Charged attempts of ``server_round`` lost to a crash (a journal knows them)."""
        return 0

    def header(self) -> dict[str, Any]:
        """The ledger's fixed parameters, JSON-able (a journal's session line)."""
        return {
            "mode": "central",
            "noise_multiplier": self.noise_multiplier,
            "sampling_rate": self.sampling_rate,
            "delta": self.delta,
            "sampling": self.sampling,
            "population": self.population,
            "count_noise_multiplier": self.count_noise_multiplier,
            "max_epsilon": self.max_epsilon,
            "planned_rounds": self.planned_rounds,
        }

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> DPFedAvgAccountant:
        """The empty ledger a :meth:`header` describes."""
        return cls(**{k: v for k, v in header.items() if k != "mode"})

    def state(self) -> dict[str, Any]:
        """What a checkpoint must keep: the events composed so far (JSON-able).

        ``plan`` records the rounds and z the run was calibrated for, so that a resume
        of the same run reuses that z exactly.
        """
        return {
            "history": [[e.to_json(), n] for e, n in self.history],
            **_plan(self.planned_rounds, self.noise_multiplier),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state` (the past keeps the settings it ran with)."""
        self.history = [(RoundEvent.from_json(e), int(n)) for e, n in state["history"]]

    def report(self) -> dict[str, Any]:
        """The figures for ``summary.json``: the reported ε is RDP's, as every round's was.

        RDP prices every round (``privacy/epsilon``) and every budget (``max_epsilon``,
        the ``target_epsilon`` calibration), so it is the one ε a run shows; PLD's
        tighter figure for the same rounds is added as ``epsilon_pld``.
        """
        eps_rdp = self.epsilon()
        eps_pld = None if self.sampling == "fixed" else self.epsilon(method="pld")
        return {
            "mode": "central",
            "epsilon": eps_rdp,
            "accountant": "RDP",
            "epsilon_rdp": eps_rdp,
            "epsilon_pld": eps_pld,
            "delta": self.delta,
            "noise_multiplier": self.noise_multiplier,
            "update_noise_multiplier": self.event.noise_multiplier,
            "count_noise_multiplier": self.count_noise_multiplier,
            "sampling_rate": self.sampling_rate,
            "sampling": self.sampling,
            "rounds": self.rounds,
            "events": [{**e.to_json(), "rounds": n} for e, n in self.history],
            "adjacency": "replace-one client" if self.sampling == "fixed" else "add/remove client",
        }


def _precision(noise_multiplier: float) -> float:
    """What one local-DP release adds to a client's precision: ``(2 / z)^2`` (inf at 0)."""
    return math.inf if noise_multiplier == 0 else (2.0 / noise_multiplier) ** 2


def _plan(rounds: int | None, noise_multiplier: float) -> dict[str, Any]:
    if rounds is None:
        return {}
    return {"plan": {"rounds": rounds, "noise_multiplier": noise_multiplier}}


class _PerClientLedger:
    """Bookkeeping of ledgers whose ε is per client: who released, how often.

    The ledger classes declare ``participations`` and ``rounds`` and define ``epsilon``
    and ``_charge``. A client that released twice in one round (a retried attempt) is
    listed twice and charged twice.
    """

    participations: dict[int, int]
    rounds: int
    noise_multiplier: float
    planned_rounds: int | None = None

    def epsilon(self) -> float:
        raise NotImplementedError

    def _charge(self, cid: int, charge: Mapping[str, Any]) -> None:
        """Extra per-release bookkeeping of a subclass (none by default)."""

    def charge(self, participants: Sequence[int]) -> dict[str, Any]:
        """What one more attempt costs: a release by each listed client (JSON-able)."""
        return {"clients": [int(c) for c in participants]}

    def apply(self, charge: Mapping[str, Any]) -> None:
        """Spend a :meth:`charge`: one round, one release per listed client (duplicates count)."""
        self.rounds += 1
        for cid in charge["clients"]:
            self.participations[int(cid)] = self.participations.get(int(cid), 0) + 1
            self._charge(int(cid), charge)

    def record(
        self, participants: Sequence[int], *, server_round: int = 0, attempt: int = 0
    ) -> float:
        """Charge one attempt of ``participants``; returns ε."""
        self.apply(self.charge(participants))
        return self.epsilon()

    def lost_attempts(self, server_round: int) -> int:
        """Charged attempts of ``server_round`` lost to a crash (a journal knows them)."""
        return 0

    def state(self) -> dict[str, Any]:
        """What a checkpoint must keep (JSON-able: string keys)."""
        return {
            "rounds": self.rounds,
            "participations": {str(k): v for k, v in self.participations.items()},
            **_plan(self.planned_rounds, self.noise_multiplier),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state`."""
        self.rounds = int(state["rounds"])
        self.participations = {int(k): int(v) for k, v in state["participations"].items()}


@dataclass
class LocalDPAccountant(_PerClientLedger):
    """Per-client ε of local DP: each client composes only its own releases.

    A release with multiplier z_l (std z_l C, sensitivity 2C) adds ``(2 / z_l)^2`` to
    the client's *precision*; k releases of any multipliers are one Gaussian with
    multiplier ``precision^-1/2`` (Gaussians compose exactly), so a resumed run whose z
    changed is priced as it ran.

    Attributes:
        noise_multiplier: z_l of the releases to come.
        delta: δ per client.
        max_epsilon: Stop before any client's ε would exceed this.
        participations: Releases per client id (checkpointed).
        precision: Σ (2 / z_l)^2 over each client's releases (checkpointed).
    """

    noise_multiplier: float
    delta: float
    max_epsilon: float | None = None
    participations: dict[int, int] = field(default_factory=dict)
    rounds: int = 0
    precision: dict[int, float] = field(default_factory=dict)
    planned_rounds: int | None = None

    @property
    def _unit(self) -> float:
        return _precision(self.noise_multiplier)

    def charge(self, participants: Sequence[int]) -> dict[str, Any]:
        """The releases and the multiplier they are noised with."""
        return {**super().charge(participants), "noise_multiplier": self.noise_multiplier}

    def _charge(self, cid: int, charge: Mapping[str, Any]) -> None:
        unit = _precision(float(charge.get("noise_multiplier", self.noise_multiplier)))
        self.precision[cid] = self.precision.get(cid, 0.0) + unit

    def header(self) -> dict[str, Any]:
        """The ledger's fixed parameters, JSON-able (a journal's session line)."""
        return {
            "mode": "local",
            "noise_multiplier": self.noise_multiplier,
            "delta": self.delta,
            "max_epsilon": self.max_epsilon,
            "planned_rounds": self.planned_rounds,
        }

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> LocalDPAccountant:
        """The empty ledger a :meth:`header` describes."""
        return cls(**{k: v for k, v in header.items() if k != "mode"})

    @staticmethod
    def epsilon_of_precision(precision: float, delta: float) -> float:
        """ε of one Gaussian with multiplier ``precision^-1/2`` (analytic Gaussian)."""
        import dp_accounting as dpa

        if precision <= 0:
            return 0.0
        if math.isinf(precision):
            return math.inf
        return float(dpa.get_epsilon_gaussian(precision**-0.5, delta))

    def client_epsilon(self, releases: int) -> float:
        """ε of ``releases`` releases at today's z_l (sensitivity 2C)."""
        if releases <= 0:
            return 0.0
        return self.epsilon_of_precision(releases * self._unit, self.delta)

    def epsilon(self) -> float:
        """The worst client's ε so far."""
        return self.epsilon_of_precision(max(self.precision.values(), default=0.0), self.delta)

    def allows_next_round(self) -> bool:
        """Whether every client could take part once more within ``max_epsilon``."""
        worst = max(self.precision.values(), default=0.0)
        return (
            self.max_epsilon is None
            or self.epsilon_of_precision(worst + self._unit, self.delta) <= self.max_epsilon
        )

    def state(self) -> dict[str, Any]:
        """Participations and per-client precision (JSON-able)."""
        return {**super().state(), "precision": {str(k): v for k, v in self.precision.items()}}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state`."""
        super().restore(state)
        self.precision = {int(k): float(v) for k, v in state["precision"].items()}

    def report(self) -> dict[str, Any]:
        """Per-client ε (the worst is the reported ε) for ``summary.json``."""
        per_client = {
            c: self.epsilon_of_precision(p, self.delta) for c, p in sorted(self.precision.items())
        }
        return {
            "mode": "local",
            "epsilon": self.epsilon(),
            "accountant": "analytic Gaussian",
            "epsilon_per_client": per_client,
            "delta": self.delta,
            "noise_multiplier": self.noise_multiplier,
            "sampling_rate": None,
            "rounds": self.rounds,
            "adjacency": "any two datasets of one client (sensitivity 2C)",
        }


@dataclass
class DistributedDPAccountant(_PerClientLedger):
    """Per-client ε of distributed DP against the server, which knows who took part.

    Every sampled attempt charges each of its clients one release (before it starts,
    whether or not the round is later unmasked); k releases cost ``k`` times the
    mechanism's RDP (:mod:`fedray.privacy.distributed`), without amplification by
    sampling.

    Attributes:
        plan: The mechanism's parameters for this model.
        delta: δ per client.
        max_epsilon: Stop before any client's ε would exceed this.
        participations: Releases per client id (checkpointed).
    """

    plan: DistributedPlan
    delta: float
    max_epsilon: float | None = None
    participations: dict[int, int] = field(default_factory=dict)
    rounds: int = 0
    planned_rounds: int | None = None

    @property
    def noise_multiplier(self) -> float:  # type: ignore[override]
        """Z of the mechanism."""
        return self.plan.noise_multiplier

    def header(self) -> dict[str, Any]:
        """The ledger's fixed parameters, JSON-able (a journal's session line)."""
        return {
            "mode": "distributed",
            "plan": dataclasses.asdict(self.plan),
            "delta": self.delta,
            "max_epsilon": self.max_epsilon,
            "planned_rounds": self.planned_rounds,
        }

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> DistributedDPAccountant:
        """The empty ledger a :meth:`header` describes."""
        rest = {k: v for k, v in header.items() if k not in ("mode", "plan")}
        return cls(plan=DistributedPlan(**header["plan"]), **rest)

    def client_epsilon(self, releases: int) -> float:
        """ε of one client after ``releases`` releases."""
        return distributed_epsilon(self.plan, releases, self.delta)

    def epsilon(self) -> float:
        """The worst client's ε so far."""
        return self.client_epsilon(max(self.participations.values(), default=0))

    def allows_next_round(self) -> bool:
        """Whether every client could take part once more within ``max_epsilon``."""
        worst = max(self.participations.values(), default=0)
        return self.max_epsilon is None or self.client_epsilon(worst + 1) <= self.max_epsilon

    def report(self) -> dict[str, Any]:
        """Per-client ε (the worst is the reported ε) and the mechanism's parameters."""
        p = self.plan
        return {
            "mode": "distributed",
            "mechanism": p.mechanism,
            "epsilon": self.epsilon(),
            "accountant": "RDP",
            "epsilon_per_client": {
                c: self.client_epsilon(k) for c, k in sorted(self.participations.items())
            },
            "delta": self.delta,
            "noise_multiplier": p.noise_multiplier,
            "sampling_rate": None,
            "rounds": self.rounds,
            "adjacency": "zero-out: one client's update against none (sensitivity B)",
            "scale": p.scale,
            "sensitivity": p.sensitivity,
            "noise_inflation": p.inflation,
            "min_survivors": p.min_survivors,
            "modulus_bits": p.modulus_bits,
            "threat": "the server sees only the noised sum; sampling is not amplified",
        }
