"""Privacy accounting for client-level DP, built on Google's ``dp-accounting``.

* DP-FedAvg (McMahan et al., ICLR 2018, arXiv:1710.06963): each round is
  ``PoissonSampled(q, Gaussian(z))`` under add-or-remove-one-client adjacency,
  composed over the rounds, converted to (ε, δ) by RDP (Mironov 2017,
  arXiv:1702.07476, with the conversion of Balle et al. 2020, arXiv:1905.09982) and by
  privacy-loss distributions (PLD, tightest). Adaptive clipping rounds are
  ``PoissonSampled(q, Composed([Gaussian(z_Δ), Gaussian(2σ_b)]))`` (Andrew et al.,
  NeurIPS 2021, arXiv:1905.03871). Fixed-size sampling (m of N without replacement)
  is only supported by RDP under replace-one adjacency (Wang, Balle, Kasiviswanathan,
  arXiv:1808.00087), where replacing one client moves the clipped sum by 2C, so the
  event is ``Gaussian(z / 2)``.
* Local DP: each client's own releases compose without amplification (the server knows
  who took part); k releases of a Gaussian with sensitivity 2C and std z·C are one
  Gaussian with multiplier ``z / (2 sqrt(k))``, converted exactly by the analytic
  Gaussian mechanism (Balle & Wang, ICML 2018, arXiv:1805.06530).

Layer 1: numpy and dp-accounting only (imported inside functions, so that
``import fedray`` stays light).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

Sampling = Literal["poisson", "fixed"]


@contextmanager
def _quiet_absl() -> Iterator[None]:
    """dp-accounting logs harmless 'failed to converge ... excluding this order' warnings."""
    log = logging.getLogger("absl")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def round_event(
    noise_multiplier: float,
    sampling_rate: float,
    *,
    sampling: Sampling = "poisson",
    population: int | None = None,
    count_noise_multiplier: float | None = None,
) -> Any:
    """The ``dp_accounting`` event of one DP-FedAvg round.

    Args:
        noise_multiplier: z, the noise std on the sum over the clip norm. With adaptive
            clipping this is the update part z_Δ, and ``count_noise_multiplier`` is the
            count part 2σ_b.
        sampling_rate: q, each client's chance to take part (Poisson), or m / N.
        sampling: ``"poisson"`` or ``"fixed"`` (m of N without replacement).
        population: N, needed for ``"fixed"``.
        count_noise_multiplier: 2σ_b for adaptive clipping's noised count, else None.
    """
    import dp_accounting as dpa

    if noise_multiplier == 0:
        return dpa.NonPrivateDpEvent()
    scale = 2.0 if sampling == "fixed" else 1.0  # replace-one: sensitivity 2C
    mech: Any = dpa.GaussianDpEvent(noise_multiplier / scale)
    if count_noise_multiplier is not None:
        mech = dpa.ComposedDpEvent([mech, dpa.GaussianDpEvent(count_noise_multiplier / scale)])
    if sampling_rate >= 1.0:
        return mech
    if sampling == "fixed":
        if population is None:
            raise ValueError("fixed-size sampling needs the population size N")
        m = max(1, round(sampling_rate * population))
        return dpa.SampledWithoutReplacementDpEvent(population, m, mech)
    return dpa.PoissonSampledDpEvent(sampling_rate, mech)


def _accountant(method: str, sampling: Sampling) -> Any:
    import dp_accounting as dpa
    from dp_accounting import pld, rdp

    if sampling == "fixed":
        if method != "rdp":
            raise ValueError(
                "fixed-size sampling is accounted by RDP only (replace-one adjacency); "
                "use sampling 'poisson' for PLD"
            )
        return rdp.RdpAccountant(neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE)
    if method == "rdp":
        return rdp.RdpAccountant()
    if method == "pld":
        return pld.PLDAccountant()
    raise ValueError(f"method must be 'rdp' or 'pld', got {method!r}")


def dpfedavg_epsilon(
    noise_multiplier: float,
    sampling_rate: float,
    rounds: int,
    delta: float,
    *,
    method: Literal["rdp", "pld"] = "rdp",
    sampling: Sampling = "poisson",
    population: int | None = None,
    count_noise_multiplier: float | None = None,
) -> float:
    """ε of ``rounds`` DP-FedAvg rounds at ``delta`` (inf when z = 0; 0 for 0 rounds).

    >>> round(dpfedavg_epsilon(1.0, 0.01, 1000, 1e-5), 3)
    2.101
    """
    if rounds <= 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    if count_noise_multiplier is not None and method == "pld":
        # PLD accounts only single mechanisms under sampling; two Gaussians on the same
        # sample are exactly one with z^-2 = z_Δ^-2 + (2σ_b)^-2.
        noise_multiplier = (noise_multiplier**-2 + count_noise_multiplier**-2) ** -0.5
        count_noise_multiplier = None
    event = round_event(
        noise_multiplier,
        sampling_rate,
        sampling=sampling,
        population=population,
        count_noise_multiplier=count_noise_multiplier,
    )
    with _quiet_absl():
        acc = _accountant(method, sampling)
        acc.compose(event, rounds)
        return float(acc.get_epsilon(delta))


def calibrate_noise_multiplier(
    target_epsilon: float,
    sampling_rate: float,
    rounds: int,
    delta: float,
    *,
    sampling: Sampling = "poisson",
    population: int | None = None,
    tol: float = 1e-3,
    prior: Sequence[tuple[RoundEvent, int]] = (),
) -> float:
    """The smallest z (within ``tol``) whose RDP ε after ``rounds`` is at most the target.

    Bisection, since ε falls as z grows; returns the upper end, so ε <= target holds.
    ``prior`` lists rounds already spent (a resumed, extended run): then ``rounds``
    more rounds at z are priced on top of them.

    Raises:
        ValueError: The target cannot be reached with z <= 1000 (e.g. target ε tiny
            with q = 1 and many rounds).
    """
    if not target_epsilon > 0:
        raise ValueError(f"target_epsilon must be > 0, got {target_epsilon}")

    def eps(z: float) -> float:
        if not prior:
            return dpfedavg_epsilon(
                z, sampling_rate, rounds, delta, sampling=sampling, population=population
            )
        event = RoundEvent(z, None, sampling_rate, sampling, population)
        return compose_epsilon([*prior, (event, rounds)], delta)

    lo, hi = 0.05, 1.0
    while eps(hi) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > 1000:
            raise ValueError(
                f"target_epsilon={target_epsilon:g} cannot be reached: even noise_multiplier="
                f"1000 gives ε={eps(1000.0):.4g} for q={sampling_rate:g}, {rounds} rounds, "
                f"δ={delta:g}"
                + (f" after the {sum(n for _, n in prior)} rounds already spent" if prior else "")
                + "; raise the target, lower the rounds or sample fewer clients"
            )
    while hi - lo > tol:
        mid = (lo + hi) / 2
        if eps(mid) > target_epsilon:
            lo = mid
        else:
            hi = mid
    return hi


def split_noise(noise_multiplier: float, count_stddev: float) -> float:
    """z_Δ for the updates when adaptive clipping spends part of z on the count.

    Clients send their *centred* unclipped bit ``b - 1/2`` (sensitivity ½), so a count
    noised with std σ_b has the noise multiplier ``2σ_b``. Two Gaussians on the same
    sample compose like one with ``z^-2 = z_Δ^-2 + (2σ_b)^-2`` (Andrew et al. 2021, §3).

    >>> round(split_noise(1.0, 5.0), 4)
    1.005

    Raises:
        ValueError: When ``z >= 2σ_b`` (the count would use up the whole budget).
    """
    count_z = 2.0 * count_stddev
    if noise_multiplier == 0:
        return 0.0
    if not noise_multiplier < count_z:
        raise ValueError(
            f"adaptive clipping needs noise_multiplier < 2 * count_stddev, got z="
            f"{noise_multiplier:g} and count_stddev={count_stddev:g}; raise count_stddev "
            "(default: expected clients / 20) or use a fixed clip"
        )
    return float((noise_multiplier**-2 - count_z**-2) ** -0.5)


def combined_multiplier(update_z: float, count_z: float | None) -> float:
    """The one Gaussian multiplier that two Gaussians on the same sample amount to.

    >>> round(combined_multiplier(split_noise(1.0, 5.0), 10.0), 12)
    1.0
    >>> combined_multiplier(0.7, None)
    0.7
    """
    if count_z is None or update_z == 0:
        return update_z
    return float((update_z**-2 + count_z**-2) ** -0.5)


@dataclass(frozen=True)
class RoundEvent:
    """One DP-FedAvg round as it ran: what the ledger composes.

    Attributes:
        noise_multiplier: z_Δ, the update noise over the clip norm.
        count_noise_multiplier: 2σ_b of adaptive clipping's centred count, else None.
        sampling_rate: q.
        sampling: ``"poisson"`` or ``"fixed"``.
        population: N.
    """

    noise_multiplier: float
    count_noise_multiplier: float | None
    sampling_rate: float
    sampling: Sampling = "poisson"
    population: int | None = None

    @property
    def total(self) -> float:
        """The single-Gaussian multiplier of the round (update and count together)."""
        return combined_multiplier(self.noise_multiplier, self.count_noise_multiplier)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (for checkpoints and ``summary.json``)."""
        return {
            "noise_multiplier": self.noise_multiplier,
            "count_noise_multiplier": self.count_noise_multiplier,
            "sampling_rate": self.sampling_rate,
            "sampling": self.sampling,
            "population": self.population,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RoundEvent:
        """The inverse of :meth:`to_json`."""
        count = data.get("count_noise_multiplier")
        pop = data.get("population")
        return cls(
            noise_multiplier=float(data["noise_multiplier"]),
            count_noise_multiplier=None if count is None else float(count),
            sampling_rate=float(data["sampling_rate"]),
            sampling=data.get("sampling", "poisson"),
            population=None if pop is None else int(pop),
        )


def compose_epsilon(
    runs: Sequence[tuple[RoundEvent, int]],
    delta: float,
    *,
    method: Literal["rdp", "pld"] = "rdp",
) -> float:
    """ε at ``delta`` of heterogeneous rounds: ``(event, count)`` runs, composed.

    >>> e = RoundEvent(1.0, None, 0.01)
    >>> round(compose_epsilon([(e, 400), (e, 600)], 1e-5), 3)
    2.101
    """
    runs = [(e, n) for e, n in runs if n > 0]
    if not runs:
        return 0.0
    if any(e.total == 0 for e, _ in runs):
        return math.inf
    samplings = {e.sampling for e, _ in runs}
    if len(samplings) > 1:
        raise ValueError(f"cannot compose rounds of different sampling: {sorted(samplings)}")
    sampling = samplings.pop()
    with _quiet_absl():
        acc = _accountant(method, sampling)
        for e, n in runs:
            acc.compose(
                round_event(e.total, e.sampling_rate, sampling=e.sampling, population=e.population),
                n,
            )
        return float(acc.get_epsilon(delta))


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
    _cache: dict[tuple[Any, ...], float] = field(default_factory=dict, repr=False)

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
        key = (tuple(runs), method)
        if key not in self._cache:
            self._cache[key] = compose_epsilon(runs, self.delta, method=method)
        return self._cache[key]

    def allows_next_round(self) -> bool:
        """Whether one more round stays within ``max_epsilon``."""
        return self.max_epsilon is None or self.epsilon(self.rounds + 1) <= self.max_epsilon

    def record(self, participants: Sequence[int]) -> float:
        """Spend one round (it counts even with no participants); returns ε (RDP)."""
        self._spend(self.event)
        return self.epsilon()

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
        """The figures for ``summary.json``: RDP and PLD ε (PLD is the reported ε)."""
        eps_rdp = self.epsilon()
        eps_pld = None if self.sampling == "fixed" else self.epsilon(method="pld")
        return {
            "mode": "central",
            "epsilon": eps_pld if eps_pld is not None else eps_rdp,
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

    def _charge(self, cid: int) -> None:
        """Extra per-release bookkeeping of a subclass (none by default)."""

    def record(self, participants: Sequence[int]) -> float:
        """Count one round and one release per listed client (duplicates count); returns ε."""
        self.rounds += 1
        for cid in participants:
            self.participations[int(cid)] = self.participations.get(int(cid), 0) + 1
            self._charge(int(cid))
        return self.epsilon()

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

    @property
    def _unit(self) -> float:
        return math.inf if self.noise_multiplier == 0 else (2.0 / self.noise_multiplier) ** 2

    def _charge(self, cid: int) -> None:
        self.precision[cid] = self.precision.get(cid, 0.0) + self._unit

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
            "epsilon_per_client": per_client,
            "delta": self.delta,
            "noise_multiplier": self.noise_multiplier,
            "sampling_rate": None,
            "rounds": self.rounds,
            "adjacency": "any two datasets of one client (sensitivity 2C)",
        }


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
    _cache: dict[tuple[float, int, float], float] = field(default_factory=dict, repr=False)

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
        key = (q, steps, delta)
        if key not in self._cache:
            self._cache[key] = dpfedavg_epsilon(self.noise_multiplier, q, steps, delta)
        return self._cache[key]

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
