"""Pre-aggregation: a host sums its clients' updates before they leave it.

With a linear rule (a weighted mean, DP-FedAvg's clipped sum, local DP's mean), the
server needs only ``sum_k w_k * delta_k``, ``sum_k w_k`` and the count. A host that
trains many clients can therefore send one :class:`~fedray.records.PartialSum` instead
of one update per client: per-client work (encode: clipping, local noise; validation)
still runs per client, before the sum. This is the tree of aggregators of Bonawitz et
al., "Towards Federated Learning at Scale: System Design", SysML 2019
(arXiv:1902.01046), with the host as the first level.

Math: ``total = sum_k w_k * delta_k`` accumulated in float64 in client-id order, so
that the result depends neither on arrival order nor on how clients are packed into
hosts (beyond float64 rounding). Logged metrics are summed weighted by examples,
protocol values (``ClientUpdate.protocol``, e.g. DP's unclipped bit) plainly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from fedray.records import ClientUpdate, Metrics, PartialSum


class Weighted(Protocol):
    """Anything that gives an encoded update its weight in a sum."""

    def weight(self, update: ClientUpdate) -> float:
        """``w_k`` of ``update``."""
        ...


def presum(updates: Sequence[ClientUpdate], aggregator: Weighted) -> PartialSum:
    """Sum encoded, validated updates with the aggregator's weights.

    Raises:
        ValueError: With no updates (a host with no valid update sends none).

    >>> from fedray.aggregators import Mean
    >>> u = [ClientUpdate(1, [np.array([4.0])], 2, {"loss": 1.0}),
    ...      ClientUpdate(0, [np.array([1.0])], 1, {"loss": 4.0})]
    >>> p = presum(u, Mean())
    >>> p.client_ids, p.total[0].tolist(), p.weight, p.num_examples, p.metric_sums
    ((0, 1), [9.0], 3.0, 3, {'loss': 6.0})
    """
    if not updates:
        raise ValueError("presum needs at least one update, got 0")
    ordered = sorted(updates, key=lambda u: u.client_id)
    total = [np.zeros(d.shape, np.float64) for d in ordered[0].delta]
    weight = 0.0
    for u in ordered:
        w = float(aggregator.weight(u))
        weight += w
        for acc, d in zip(total, u.delta, strict=True):
            acc += d if w == 1.0 else w * d  # equal values: w * d is d when w is 1
    shared = set.intersection(*(set(u.metrics) for u in ordered))
    sums: Metrics = {
        k: float(sum(u.metrics[k] * u.num_examples for u in ordered)) for k in sorted(shared)
    }
    protocol = set.intersection(*(set(u.protocol) for u in ordered))
    return PartialSum(
        client_ids=tuple(u.client_id for u in ordered),
        total=total,
        weight=weight,
        num_examples=sum(u.num_examples for u in ordered),
        metric_sums=sums,
        protocol_sums={k: float(sum(u.protocol[k] for u in ordered)) for k in sorted(protocol)},
    )


def combine(parts: Sequence[PartialSum]) -> PartialSum:
    """Add partial sums (in order of their first client, so arrival order never matters).

    Raises:
        ValueError: With no parts, or when two parts share a client.

    >>> a = PartialSum((0, 1), [np.array([3.0])], 2.0, 5, {"loss": 5.0})
    >>> b = PartialSum((2,), [np.array([1.0])], 1.0, 1, {"loss": 2.0, "acc": 1.0})
    >>> c = combine([b, a])
    >>> c.client_ids, c.total[0].tolist(), c.weight, c.num_examples, c.metric_sums
    ((0, 1, 2), [4.0], 3.0, 6, {'loss': 7.0})
    """
    if not parts:
        raise ValueError("combine needs at least one partial sum, got 0")
    ordered = sorted(parts, key=lambda p: p.client_ids[0] if p.client_ids else -1)
    ids = [c for p in ordered for c in p.client_ids]
    if len(set(ids)) != len(ids):
        raise ValueError(f"partial sums overlap: client ids {sorted(ids)}")
    total = [np.array(t, np.float64) for t in ordered[0].total]
    for p in ordered[1:]:
        for acc, t in zip(total, p.total, strict=True):
            acc += t
    shared = set.intersection(*(set(p.metric_sums) for p in ordered))
    protocol = set.intersection(*(set(p.protocol_sums) for p in ordered))
    return PartialSum(
        client_ids=tuple(sorted(ids)),
        total=total,
        weight=sum(p.weight for p in ordered),
        num_examples=sum(p.num_examples for p in ordered),
        metric_sums={k: sum(p.metric_sums[k] for p in ordered) for k in sorted(shared)},
        protocol_sums={k: sum(p.protocol_sums[k] for p in ordered) for k in sorted(protocol)},
    )
