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
) -> float:
    """The smallest z (within ``tol``) whose RDP ε after ``rounds`` is at most the target.

    Bisection, since ε falls as z grows; returns the upper end, so ε <= target holds.

    Raises:
        ValueError: The target cannot be reached with z <= 1000 (e.g. target ε tiny
            with q = 1 and many rounds).
    """
    if not target_epsilon > 0:
        raise ValueError(f"target_epsilon must be > 0, got {target_epsilon}")

    def eps(z: float) -> float:
        return dpfedavg_epsilon(
            z, sampling_rate, rounds, delta, sampling=sampling, population=population
        )

    lo, hi = 0.05, 1.0
    while eps(hi) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > 1000:
            raise ValueError(
                f"target_epsilon={target_epsilon:g} cannot be reached: even noise_multiplier="
                f"1000 gives ε={eps(1000.0):.4g} for q={sampling_rate:g}, {rounds} rounds, "
                f"δ={delta:g}; raise the target, lower the rounds or sample fewer clients"
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

    Two Gaussians on the same sample compose like one with
    ``z^-2 = z_Δ^-2 + (2σ_b)^-2`` (Andrew et al. 2021, §3).

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


@dataclass
class DPFedAvgAccountant:
    """The running privacy cost of a DP-FedAvg run (one event per round).

    Attributes:
        noise_multiplier: z (total, including the count's share when adaptive).
        sampling_rate: q.
        delta: δ.
        sampling: ``"poisson"`` or ``"fixed"``.
        population: N.
        count_noise_multiplier: 2σ_b with adaptive clipping (then the update part is
            ``split_noise(z, σ_b)``), else None.
        max_epsilon: Stop before a round would exceed this ε.
        rounds: Rounds spent so far (the whole state; checkpointed).
    """

    noise_multiplier: float
    sampling_rate: float
    delta: float
    sampling: Sampling = "poisson"
    population: int | None = None
    count_noise_multiplier: float | None = None
    max_epsilon: float | None = None
    rounds: int = 0
    _cache: dict[tuple[int, str], float] = field(default_factory=dict, repr=False)

    def epsilon(self, rounds: int | None = None, method: Literal["rdp", "pld"] = "rdp") -> float:
        """ε after ``rounds`` rounds (default: those spent)."""
        t = self.rounds if rounds is None else rounds
        key = (t, method)
        if key not in self._cache:
            z = self.noise_multiplier
            count = self.count_noise_multiplier
            if count is not None:
                z = split_noise(z, count / 2)
            self._cache[key] = dpfedavg_epsilon(
                z,
                self.sampling_rate,
                t,
                self.delta,
                method=method,
                sampling=self.sampling,
                population=self.population,
                count_noise_multiplier=count,
            )
        return self._cache[key]

    def allows_next_round(self) -> bool:
        """Whether one more round stays within ``max_epsilon``."""
        return self.max_epsilon is None or self.epsilon(self.rounds + 1) <= self.max_epsilon

    def record(self, participants: Sequence[int]) -> float:
        """Spend one round (it counts even with no participants); returns ε (RDP)."""
        self.rounds += 1
        return self.epsilon()

    def state(self) -> dict[str, Any]:
        """What a checkpoint must keep."""
        return {"rounds": self.rounds}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state`."""
        self.rounds = int(state["rounds"])

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
            "sampling_rate": self.sampling_rate,
            "sampling": self.sampling,
            "rounds": self.rounds,
            "adjacency": "replace-one client" if self.sampling == "fixed" else "add/remove client",
        }


class _PerClientLedger:
    """Bookkeeping of ledgers whose ε is per client: who took part, how often.

    The ledger classes declare ``participations`` and ``rounds`` and define ``epsilon``.
    """

    participations: dict[int, int]
    rounds: int

    def epsilon(self) -> float:
        raise NotImplementedError

    def record(self, participants: Sequence[int]) -> float:
        """Count one round for each client whose (noised) update was sent; returns ε."""
        self.rounds += 1
        for cid in participants:
            self.participations[cid] = self.participations.get(cid, 0) + 1
        return self.epsilon()

    def state(self) -> dict[str, Any]:
        """What a checkpoint must keep."""
        return {"rounds": self.rounds, "participations": dict(self.participations)}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state`."""
        self.rounds = int(state["rounds"])
        self.participations = {int(k): int(v) for k, v in state["participations"].items()}


@dataclass
class LocalDPAccountant(_PerClientLedger):
    """Per-client ε of local DP: each client composes only its own releases.

    Attributes:
        noise_multiplier: z_l: each client adds N(0, (z_l C)^2) to its clipped update.
        delta: δ per client.
        max_epsilon: Stop before any client's ε would exceed this.
        participations: Releases per client id (the state; checkpointed).
    """

    noise_multiplier: float
    delta: float
    max_epsilon: float | None = None
    participations: dict[int, int] = field(default_factory=dict)
    rounds: int = 0

    def client_epsilon(self, releases: int) -> float:
        """ε of ``releases`` Gaussian releases with sensitivity 2C (analytic Gaussian)."""
        import dp_accounting as dpa

        if releases <= 0:
            return 0.0
        if self.noise_multiplier == 0:
            return math.inf
        return float(
            dpa.get_epsilon_gaussian(self.noise_multiplier / (2 * math.sqrt(releases)), self.delta)
        )

    def epsilon(self) -> float:
        """The worst client's ε so far."""
        return self.client_epsilon(max(self.participations.values(), default=0))

    def allows_next_round(self) -> bool:
        """Whether every client could take part once more within ``max_epsilon``."""
        worst = max(self.participations.values(), default=0)
        return self.max_epsilon is None or self.client_epsilon(worst + 1) <= self.max_epsilon

    def report(self) -> dict[str, Any]:
        """Per-client ε (the worst is the reported ε) for ``summary.json``."""
        per_client = {c: self.client_epsilon(k) for c, k in sorted(self.participations.items())}
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


@dataclass
class DPSGDAccountant(_PerClientLedger):
    """Per-client ε of example-level DP-SGD inside the clients.

    Client k's every local step is ``PoissonSampled(B / n_k, Gaussian(z))``; it runs
    ``E ceil(n_k / B)`` steps per round it takes part in, and its steps compose.

    Attributes:
        noise_multiplier: z.
        delta: δ per client.
        batch_size: B, the expected Poisson batch size.
        local_epochs: E.
        examples: n_k per client id.
        max_epsilon: Stop before any client's ε would exceed this.
        participations: Rounds each client took part in (the state; checkpointed).
    """

    noise_multiplier: float
    delta: float
    batch_size: int
    local_epochs: int
    examples: dict[int, int]
    max_epsilon: float | None = None
    participations: dict[int, int] = field(default_factory=dict)
    rounds: int = 0
    _cache: dict[tuple[float, int], float] = field(default_factory=dict, repr=False)

    def client_epsilon(self, cid: int, participations: int) -> float:
        """ε of client ``cid`` after ``participations`` rounds of local DP-SGD."""
        n = self.examples[cid]
        q = min(1.0, self.batch_size / n)
        steps = participations * self.local_epochs * math.ceil(n / self.batch_size)
        key = (q, steps)
        if key not in self._cache:
            self._cache[key] = dpfedavg_epsilon(self.noise_multiplier, q, steps, self.delta)
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
            "noise_multiplier": self.noise_multiplier,
            "sampling_rate": {c: min(1.0, self.batch_size / n) for c, n in self.examples.items()},
            "rounds": self.rounds,
            "adjacency": "add/remove one example of a client",
        }
