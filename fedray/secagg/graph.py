"""SecAgg+'s neighbour graphs: each client shares keys with k = O(log n) others.

Bell, Bonawitz, Gascón, Lepoint, Raykova, "Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead", CCS 2020 (ePrint 2020/704): a randomly relabelled Harary
graph of degree k; the complete graph is plain SecAgg (Bonawitz et al., CCS 2017).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def harary_neighbours(
    ids: Sequence[int], degree: int, rng: np.random.Generator
) -> dict[int, list[int]]:
    """A k-regular Harary graph over ``ids`` with randomly permuted labels (SecAgg+).

    Each client is linked to the ``degree // 2`` clients on either side of it on a
    random ring; ``degree >= len(ids) - 1`` gives the complete graph (plain SecAgg).

    >>> g = harary_neighbours(list(range(10)), 4, np.random.default_rng(0))
    >>> sorted(len(v) for v in g.values()) == [4] * 10
    True
    """
    ids = list(ids)
    n = len(ids)
    if degree >= n - 1:
        return {u: sorted(v for v in ids if v != u) for u in ids}
    half = max(1, (degree + 1) // 2)
    ring = [ids[i] for i in rng.permutation(n)]
    out: dict[int, set[int]] = {u: set() for u in ids}
    for i, u in enumerate(ring):
        for off in range(1, half + 1):
            v = ring[(i + off) % n]
            out[u].add(v)
            out[v].add(u)
    return {u: sorted(v) for u, v in out.items()}


def default_degree(n: int) -> int:
    """SecAgg+'s k = O(log n): 2 ceil(log2 n) + 2, capped at n - 1."""
    return min(n - 1, 2 * math.ceil(math.log2(max(n, 2))) + 2)
