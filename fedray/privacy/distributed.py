"""The parameters and the accountant of distributed discrete DP inside secure aggregation.

Each client clips its update to C, rotates it (:mod:`fedray.privacy.discrete`), scales
it by gamma, rounds it to integers of L2 norm at most B (conditional rounding) and adds
its share of integer noise; secure aggregation sums the shares mod 2^r, so the server
only ever sees a sum that carries the whole noise. Two mechanisms:

* Skellam (Agarwal, Kairouz & Liu, NeurIPS 2021, arXiv:2110.04995): the survivors'
  shares sum to Skellam(mu) exactly, ``mu >= sigma^2 / 2``. Per release, for integer
  orders, ``eps(a) = a B^2 / (4 mu) + min((2a B^2 + 6 D1) / (16 mu^2), 3 D1 / (4 mu))``
  (the paper's Theorem 3.5 has 2a - 1 where this has 2a: never smaller).
* Distributed discrete Gaussian (Kairouz, Liu & Steinke, ICML 2021, arXiv:2102.06387,
  Theorem 1 with Proposition 14): with n shares of N_Z(0, s^2) and
  ``tau = 10 sum_{k<n} exp(-2 pi^2 s^2 k / (k + 1))``, per release
  ``eps(a) = min(a x^2 / 2 + tau d, a (x + sqrt(d) tau)^2 / 2)``, ``x = B / sigma``.

Here sigma = z B is the std of the total noise in integer units, and D1 = min(sqrt(d) B,
B^2) the L1 sensitivity. Each client adds sigma^2 / m_min of it, where m_min is the
expected cohort less the configured worst-case dropout fraction; a round with fewer
survivors aborts before anything is unmasked, so an unmasked sum always carries at
least sigma^2. Adjacency is zero-out (one client's update against none), so the
sensitivity is B.

The server knows who took part in each round (it runs the protocol), so sampling
does not amplify this guarantee: each client's releases compose on their own,
``k`` releases costing ``k eps(a)``, converted to (epsilon, delta) by dp-accounting's
RDP conversion. The reported epsilon is the worst client's.

The scale gamma is the largest for which the survivors' sum stays inside the
modulus: k standard deviations of the worst case (all updates aligned, n_max
clients) with k = sqrt(2 ln(2 d / p_wrap)), a union bound over coordinates. A wrap
only costs accuracy: the modulus is applied after the noise, so privacy never depends
on it.

Layer 1: numpy; dp-accounting is imported inside functions.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from fedray.privacy.discrete import DEFAULT_BETA, padded_dim, rounding_bound

Mechanism = Literal["skellam", "discrete_gaussian"]
INTEGER_ORDERS: tuple[float, ...] = tuple(float(a) for a in [*range(2, 64), 80, 96, 128, 256])
"""RDP orders of the Skellam bound (proved for integer orders)."""
WRAP_PROBABILITY = 1e-9
"""The chance per round that some coordinate of the sum leaves the modular range."""


@dataclass(frozen=True)
class DistributedPlan:
    """Everything both sides derive from the config and the model size.

    Attributes:
        mechanism: ``"skellam"`` or ``"discrete_gaussian"``.
        noise_multiplier: z, the total noise std over the sensitivity.
        clip: C, the L2 clip of each update.
        dim: d, the model's size (coordinates before padding).
        bits: Bits per client of the modular range; the modulus is 2^r with
            r = bits + ceil(log2(n_max + 1)), as for secure aggregation without DP.
        expected_clients: m, the expected cohort (the mean's denominator).
        population: N, every registered client (the largest possible cohort).
        max_dropout: The worst-case fraction of a cohort that may drop out before
            unmasking; each share is scaled so that the rest still carry the noise.
        beta: Conditional rounding's beta.
    """

    mechanism: Mechanism
    noise_multiplier: float
    clip: float
    dim: int
    bits: int
    expected_clients: float
    population: int
    max_dropout: float = 0.1
    beta: float = DEFAULT_BETA

    def __post_init__(self) -> None:
        if self.mechanism not in ("skellam", "discrete_gaussian"):
            raise ValueError(
                f"mechanism must be skellam or discrete_gaussian, got {self.mechanism!r}"
            )
        if not 0 <= self.max_dropout < 1:
            raise ValueError(f"max_dropout must be in [0, 1), got {self.max_dropout}")
        if self.noise_multiplier < 0 or self.clip <= 0 or self.dim < 1:
            raise ValueError("need noise_multiplier >= 0, clip > 0 and dim >= 1")
        if self.modulus_bits > 62:
            raise ValueError(
                f"{self.max_clients} clients at {self.bits} bits need a modulus of "
                f"2^{self.modulus_bits} > 2^62; lower privacy.secure_aggregation.bits"
            )

    @property
    def padded(self) -> int:
        """d', the rotation's length."""
        return padded_dim(self.dim)

    @property
    def min_survivors(self) -> int:
        """m_min: the fewest survivors whose shares still sum to the full noise."""
        return max(1, math.floor((1 - self.max_dropout) * self.expected_clients + 1e-9))

    @property
    def max_clients(self) -> int:
        """n_max, the cohort the modular range is sized for (6 std above m)."""
        m = self.expected_clients
        return int(min(self.population, math.ceil(m + 6 * math.sqrt(m) + 6)))

    @property
    def modulus_bits(self) -> int:
        """r: the sum is computed mod 2^r."""
        return self.bits + math.ceil(math.log2(self.max_clients + 1))

    def bound(self, scale: float) -> float:
        """B: the L2 norm of a rounded, scaled update."""
        return rounding_bound(scale * self.clip, self.padded, self.beta)

    def _spread(self, scale: float) -> float:
        n, d = self.max_clients, self.padded
        sigma = self.noise_multiplier * self.bound(scale)
        share = sigma**2 / self.min_survivors
        k = math.sqrt(2 * math.log(2 * d / WRAP_PROBABILITY))
        return k * math.sqrt(n * n * (scale * self.clip) ** 2 / d + n * (0.25 + share))

    @functools.cached_property
    def scale(self) -> float:
        """gamma: integers per unit, the largest whose sum fits the modulus."""
        limit = 2.0 ** (self.modulus_bits - 1) - 1
        lo, hi = 1e-9, 1e15
        if self._spread(lo) > limit:
            raise ValueError(
                f"privacy.secure_aggregation.bits={self.bits} leaves no room for the noise "
                "of distributed DP; raise it"
            )
        for _ in range(200):
            mid = math.sqrt(lo * hi)
            lo, hi = (mid, hi) if self._spread(mid) <= limit else (lo, mid)
        return lo

    @property
    def sensitivity(self) -> float:
        """B at the chosen scale: one client's largest contribution (integer units)."""
        return self.bound(self.scale)

    @property
    def l1_sensitivity(self) -> float:
        """D1 = min(sqrt(d') B, B^2): integer vectors have L1 <= L2^2."""
        b = self.sensitivity
        return min(math.sqrt(self.padded) * b, b * b)

    @property
    def noise_std(self) -> float:
        """Sigma = z B, the std of the total noise per coordinate (integer units)."""
        return self.noise_multiplier * self.sensitivity

    @property
    def local_std(self) -> float:
        """Each client's share: std sigma / sqrt(m_min)."""
        return self.noise_std / math.sqrt(self.min_survivors)

    @property
    def inflation(self) -> float:
        """B / (gamma C): how much rounding inflates the noise over central DP's z C."""
        return self.sensitivity / (self.scale * self.clip)

    def orders(self) -> tuple[float, ...]:
        """The RDP orders this mechanism's bound holds at."""
        if self.mechanism == "skellam":
            return INTEGER_ORDERS
        from dp_accounting.rdp.rdp_privacy_accountant import DEFAULT_RDP_ORDERS

        return tuple(float(a) for a in DEFAULT_RDP_ORDERS)

    def rdp(self) -> np.ndarray:
        """RDP of one release at :meth:`orders` (inf without noise)."""
        a = np.asarray(self.orders())
        if self.noise_multiplier == 0:
            return np.full(a.shape, math.inf)
        b, d1 = self.sensitivity, self.l1_sensitivity
        if self.mechanism == "skellam":
            return skellam_rdp(a, b, d1, self.noise_std**2 / 2)
        tau = ddgauss_tau(self.local_std, self.population)
        return ddgauss_rdp(a, b / self.noise_std, tau, self.padded)


def skellam_rdp(orders: np.ndarray, l2: float, l1: float, mu: float) -> np.ndarray:
    """The Skellam mechanism's RDP bound at integer ``orders`` (Poisson rate ``mu``).

    >>> float(skellam_rdp(np.array([2.0]), 1.0, 1.0, 1e6)[0]) > 2 / (4 * 1e6)
    True
    """
    first = orders * l2 * l2 / (4 * mu)
    extra = np.minimum((2 * orders * l2 * l2 + 6 * l1) / (16 * mu * mu), 3 * l1 / (4 * mu))
    return np.asarray(first + extra, np.float64)


def ddgauss_tau(local_std: float, clients: int) -> float:
    """Tau of KLS'21 Theorem 1 for ``clients`` shares of N_Z(0, local_std^2)."""
    k = np.arange(1, max(clients, 1), dtype=np.float64)
    return float(10 * np.exp(-2 * math.pi**2 * local_std**2 * k / (k + 1)).sum())


def ddgauss_rdp(orders: np.ndarray, x: float, tau: float, dim: int) -> np.ndarray:
    """The distributed discrete Gaussian's RDP, ``x`` = sensitivity / total std.

    With tau = 0 it is the Gaussian's ``a x^2 / 2``:

    >>> ddgauss_rdp(np.array([2.0, 4.0]), 1.0, 0.0, 10).tolist()
    [1.0, 2.0]
    """
    one = orders * x * x / 2 + tau * dim
    two = orders * (x + math.sqrt(dim) * tau) ** 2 / 2
    return np.asarray(np.minimum(one, two), np.float64)


def rdp_epsilon(orders: tuple[float, ...], rdp: np.ndarray, delta: float) -> float:
    """(epsilon, delta) of an RDP curve, by dp-accounting's conversion."""
    from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

    if not np.isfinite(rdp).any():
        return math.inf
    eps, _ = compute_epsilon(list(orders), [float(r) for r in rdp], delta)
    return float(eps)


@functools.lru_cache(maxsize=4096)
def distributed_epsilon(plan: DistributedPlan, releases: int, delta: float) -> float:
    """Epsilon of one client after ``releases`` releases under ``plan`` (0 for none)."""
    if releases <= 0:
        return 0.0
    return rdp_epsilon(plan.orders(), releases * plan.rdp(), delta)


def calibrate(plan: DistributedPlan, target: float, releases: int, delta: float) -> float:
    """The smallest z whose ``releases`` releases cost at most ``target``.

    Raises:
        ValueError: Even z = 1000 spends more.
    """
    from dataclasses import replace

    def eps(z: float) -> float:
        return distributed_epsilon(replace(plan, noise_multiplier=z), releases, delta)

    lo, hi = 1e-3, 1e3
    if eps(hi) > target:
        raise ValueError(f"no noise multiplier <= {hi:g} reaches epsilon {target:g}")
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if eps(mid) <= target else (mid, hi)
        if hi / lo < 1 + 1e-6:
            break
    return hi
