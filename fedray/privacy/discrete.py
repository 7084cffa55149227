"""The client-side pieces of distributed discrete DP: rotate, round, add integer noise.

* Randomized Hadamard rotation: ``x -> H D x / sqrt(d')`` with D a diagonal of random
  signs and d' the next power of two. It is orthogonal (norms are kept) and spreads a
  vector's mass evenly over the coordinates, so that rounding and the modular range
  cost little (Kairouz, Liu & Steinke, ICML 2021, arXiv:2102.06387, section 4).
* Conditional randomized rounding: each coordinate goes to its floor or ceiling with
  the probability that keeps it unbiased, and the draw is repeated until the rounded
  vector's L2 norm is within the bound of KLS'21 (Theorem 1):
  ``B^2 = min((c + sqrt(d'))^2, c^2 + d'/4 + sqrt(2 ln(1/beta)) (c + sqrt(d')/2))``
  for an input of norm at most c. A draw passes with probability at least 1 - beta.
* Integer noise shares: Skellam, ``Poisson(lambda) - Poisson(lambda)`` (Agarwal,
  Kairouz & Liu, NeurIPS 2021, arXiv:2110.04995), whose sum over clients is again
  Skellam; and the discrete Gaussian N_Z(0, sigma^2), sampled by rejection from a
  discrete Laplace (Canonne, Kamath & Steinke, NeurIPS 2020, arXiv:2004.00010, with
  floating-point acceptance probabilities).

Layer 1: numpy only.
"""

from __future__ import annotations

import math

import numpy as np

DEFAULT_BETA = math.exp(-0.5)
"""beta of conditional rounding: a draw fails the norm check with probability <= beta."""


def padded_dim(dim: int) -> int:
    """The next power of two >= ``dim`` (the rotation's length).

    >>> padded_dim(5), padded_dim(8), padded_dim(1)
    (8, 8, 1)
    """
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    return 1 << (dim - 1).bit_length()


def hadamard(x: np.ndarray) -> np.ndarray:
    """The unnormalised fast Walsh-Hadamard transform of ``x`` (length a power of two).

    >>> hadamard(np.array([1.0, 0.0, 0.0, 0.0])).tolist()
    [1.0, 1.0, 1.0, 1.0]
    >>> hadamard(np.array([1.0, 2.0])).tolist()
    [3.0, -1.0]
    """
    n = x.size
    if n & (n - 1):
        raise ValueError(f"the length must be a power of two, got {n}")
    out = np.asarray(x, np.float64).ravel().copy()
    h = 1
    while h < n:
        pairs = out.reshape(-1, 2, h)
        out = np.stack([pairs[:, 0] + pairs[:, 1], pairs[:, 0] - pairs[:, 1]], axis=1).ravel()
        h *= 2
    return np.asarray(out, np.float64)


def rotation_signs(dim: int, seed: int, server_round: int) -> np.ndarray:
    """The round's shared diagonal D of +-1 (public: the server inverts the rotation)."""
    rng = np.random.default_rng([seed, server_round, 23])
    return rng.integers(0, 2, padded_dim(dim)) * 2.0 - 1.0


def rotate(x: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """``H D x / sqrt(d')`` of ``x`` zero-padded to ``len(signs)``; orthogonal.

    >>> s = rotation_signs(3, 0, 1)
    >>> x = np.array([3.0, -4.0, 0.0])
    >>> y = rotate(x, s)
    >>> round(float(np.linalg.norm(y)), 9), np.allclose(unrotate(y, s, 3), x)
    (5.0, True)
    """
    padded = np.zeros(signs.size)
    padded[: x.size] = x
    return hadamard(padded * signs) / math.sqrt(signs.size)


def unrotate(y: np.ndarray, signs: np.ndarray, dim: int) -> np.ndarray:
    """The inverse of :func:`rotate`, truncated to the first ``dim`` coordinates."""
    return np.asarray((hadamard(y) / math.sqrt(signs.size) * signs)[:dim], np.float64)


def rounding_bound(norm: float, dim: int, beta: float = DEFAULT_BETA) -> float:
    """B, the L2 norm conditional rounding guarantees for inputs of norm <= ``norm``.

    KLS'21, Theorem 1 (with beta = 0 only the unconditional bound ``norm + sqrt(d)``).

    >>> round(rounding_bound(100.0, 64, beta=0.0), 6)
    108.0
    >>> rounding_bound(100.0, 64) < 108.0
    True
    """
    plain = (norm + math.sqrt(dim)) ** 2
    if beta <= 0:
        return math.sqrt(plain)
    cond = norm**2 + dim / 4 + math.sqrt(2 * math.log(1 / beta)) * (norm + math.sqrt(dim) / 2)
    return math.sqrt(min(plain, cond))


def conditional_round(
    x: np.ndarray, bound: float, rng: np.random.Generator, *, max_tries: int = 1000
) -> np.ndarray:
    """Unbiased randomized rounding of ``x`` to integers, redrawn until ``||.||_2 <= bound``.

    Returns an int64 vector. If no draw passes in ``max_tries`` (probability at most
    beta^max_tries for a valid input), the zero vector is returned: it is within any
    bound, so the sensitivity the accountant assumes still holds.
    """
    low = np.floor(x)
    frac = x - low
    for _ in range(max_tries):
        out = (low + (rng.random(x.shape) < frac)).astype(np.int64)
        if float(np.dot(out, out)) <= bound * bound:
            return np.asarray(out, np.int64)
    return np.zeros(x.shape, np.int64)


def skellam(lam: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """Symmetric Skellam noise ``Poisson(lam) - Poisson(lam)`` (variance 2 lam), int64."""
    if lam <= 0:
        return np.zeros(size, np.int64)
    return rng.poisson(lam, size).astype(np.int64) - rng.poisson(lam, size).astype(np.int64)


def discrete_gaussian(sigma: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """Samples of N_Z(0, sigma^2), P[k] proportional to exp(-k^2 / (2 sigma^2)); int64.

    Rejection sampling from the discrete Laplace of scale t = floor(sigma) + 1
    (Canonne, Kamath & Steinke 2020, Algorithm 3), vectorised.
    """
    out = np.zeros(size, np.int64)
    if sigma <= 0:
        return out
    t = math.floor(sigma) + 1
    p = 1 - math.exp(-1 / t)
    todo = np.arange(size)
    while todo.size:
        k = todo.size
        lap = rng.geometric(p, k).astype(np.int64) - rng.geometric(p, k).astype(np.int64)
        accept = rng.random(k) < np.exp(-((np.abs(lap) - sigma**2 / t) ** 2) / (2 * sigma**2))
        out[todo[accept]] = lap[accept]
        todo = todo[~accept]
    return out
