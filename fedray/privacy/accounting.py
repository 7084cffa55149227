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

import functools
import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
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

    Memoised, as :func:`compose_epsilon` is: calibration and planning ask again.

    >>> round(dpfedavg_epsilon(1.0, 0.01, 1000, 1e-5), 3)
    2.101
    """
    return _dpfedavg(
        float(noise_multiplier),
        float(sampling_rate),
        int(rounds),
        float(delta),
        method,
        sampling,
        population,
        count_noise_multiplier,
    )


@functools.lru_cache(maxsize=4096)
def _dpfedavg(
    noise_multiplier: float,
    sampling_rate: float,
    rounds: int,
    delta: float,
    method: str,
    sampling: Sampling,
    population: int | None,
    count_noise_multiplier: float | None,
) -> float:
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

    A pure function of its arguments, so it is memoised: a PLD composition takes
    seconds, and a run's report, the planner and a resumed run ask for the same ones.

    >>> e = RoundEvent(1.0, None, 0.01)
    >>> round(compose_epsilon([(e, 400), (e, 600)], 1e-5), 3)
    2.101
    """
    return _compose(tuple((e, int(n)) for e, n in runs if n > 0), float(delta), method)


@functools.lru_cache(maxsize=1024)
def _compose(runs: tuple[tuple[RoundEvent, int], ...], delta: float, method: str) -> float:
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
