"""Shamir t-of-n secret sharing over the prime field GF(2^127 - 1).

Shamir, "How to Share a Secret", CACM 1979. A byte string is cut into 15-byte chunks
(each below the prime) and every chunk is shared with its own random polynomial of
degree t - 1; coefficients come from ``secrets``. Share holders are x = 1, 2, ...
(fedray uses client id + 1). Any t shares give the secret by Lagrange interpolation
at 0; fewer reveal nothing about it.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence

PRIME = 2**127 - 1
CHUNK = 15  # bytes per field element (< 2^120 < PRIME)


def shamir_split(secret: bytes, threshold: int, xs: Sequence[int]) -> dict[int, tuple[int, ...]]:
    """Shares of ``secret`` for holders ``xs`` (1 <= x < PRIME); ``threshold`` of them recover it.

    >>> shares = shamir_split(b"attack at dawn", 2, [1, 2, 3])
    >>> shamir_combine({x: shares[x] for x in (1, 3)}, 2, 14)
    b'attack at dawn'
    """
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold must be in [1, {len(xs)}], got {threshold}")
    if len(set(xs)) != len(xs) or not all(0 < x < PRIME for x in xs):
        raise ValueError(f"share holders must be distinct integers in (0, p), got {list(xs)}")
    chunks = [
        int.from_bytes(secret[i : i + CHUNK], "big") for i in range(0, max(len(secret), 1), CHUNK)
    ]
    out: dict[int, list[int]] = {x: [] for x in xs}
    for value in chunks:
        coeffs = [value] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
        for x in xs:
            acc = 0
            for c in reversed(coeffs):  # Horner
                acc = (acc * x + c) % PRIME
            out[x].append(acc)
    return {x: tuple(v) for x, v in out.items()}


def interpolate_at_zero(shares: Mapping[int, Sequence[int]]) -> list[int]:
    """Lagrange interpolation at x = 0 of each chunk, through exactly the given shares.

    With ``threshold`` shares this is the secret's chunks; with fewer it is the value
    at 0 of a lower-degree polynomial, which says nothing about the secret.

    >>> interpolate_at_zero({1: (5,), 2: (7,)})  # the line through (1, 5), (2, 7)
    [3]
    """
    xs = sorted(shares)
    chunks = []
    for i in range(len(shares[xs[0]])):
        value = 0
        for j in xs:
            num, den = 1, 1
            for m in xs:
                if m != j:
                    num = num * (-m) % PRIME
                    den = den * (j - m) % PRIME
            value = (value + shares[j][i] * num * pow(den, PRIME - 2, PRIME)) % PRIME
        chunks.append(value)
    return chunks


def shamir_combine(shares: Mapping[int, Sequence[int]], threshold: int, length: int) -> bytes:
    """The ``length``-byte secret from at least ``threshold`` shares.

    Raises:
        ValueError: Fewer than ``threshold`` shares.
    """
    if len(shares) < threshold:
        raise ValueError(f"need {threshold} shares to reconstruct, got {len(shares)}")
    xs = sorted(shares)[:threshold]
    chunks = interpolate_at_zero({x: shares[x] for x in xs})
    sizes = [CHUNK] * (len(chunks) - 1) + [length - CHUNK * (len(chunks) - 1)]
    return b"".join(c.to_bytes(s, "big") for c, s in zip(chunks, sizes, strict=True))
