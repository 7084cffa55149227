"""The pieces of one server step that every scheduler shares.

Aggregation (plain updates and hosts' partial sums alike), the logged training
metrics, the evaluations and the canaries of an audit run. Layer 2: pure functions
over the strategy and the executor protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedray.aggregators import Aggregator, LinearAggregator, Mean, combine, presum
from fedray.aggregators.compression import wire_bytes
from fedray.callbacks import Logs
from fedray.features import Feature
from fedray.records import (
    AggState,
    ClientEval,
    ClientUpdate,
    Metrics,
    Params,
    PartialSum,
)


@dataclass(frozen=True)
class Evaluation:
    """How often each evaluation runs (every N server steps; 0: never; the last always).

    Attributes:
        every: The server's test set (``eval/*``).
        federated_every: The clients' own test splits (``fed_eval/*``).
        train_every: The global model on every client's training rows (``train/*``).
    """

    every: int = 1
    federated_every: int = 0
    train_every: int = 0


def due(server_round: int, every: int, last: int) -> bool:
    """Whether a task run every ``every`` rounds (0: never) runs in ``server_round``.

    The ``last`` round always runs it.

    >>> [r for r in range(1, 8) if due(r, 3, 7)], due(7, 0, 7)
    ([3, 6, 7], False)
    """
    return bool(every) and (server_round % every == 0 or server_round == last)


def weighted_logs(items: Sequence[ClientUpdate | ClientEval], prefix: str) -> Logs:
    """Example-weighted mean of each metric present in every item."""
    total = sum(i.num_examples for i in items)
    if not items or total <= 0:
        return {}
    keys = set.intersection(*(set(i.metrics) for i in items))
    return {
        f"{prefix}/{k}": sum(i.metrics[k] * i.num_examples for i in items) / total
        for k in sorted(keys)
    }


def evaluate_round(
    executor: Any, handle: Any, evaluation: Evaluation, server_round: int, last: int
) -> Logs:
    """The step's evaluations that are due, each example-weighted over who answers."""
    logs: Logs = {}
    if due(server_round, evaluation.every, last):
        logs.update({f"eval/{k}": v for k, v in executor.evaluate(handle).items()})
    if due(server_round, evaluation.federated_every, last):
        evals = executor.evaluate_clients(range(executor.num_clients), handle)
        answered = [e for e in evals if isinstance(e, ClientEval)]
        logs.update(weighted_logs(answered, "fed_eval"))
        logs["fed_eval/clients"] = len(answered)
    if due(server_round, evaluation.train_every, last):  # FedProx's training loss
        evals = executor.evaluate_clients(range(executor.num_clients), handle, "train")
        logs.update(weighted_logs([e for e in evals if isinstance(e, ClientEval)], "train"))
    return logs


def aggregate(
    aggregator: Aggregator,
    updates: Sequence[ClientUpdate | PartialSum],
    params: Params,
    state: AggState,
    rng: np.random.Generator,
) -> tuple[Params, AggState, Metrics]:
    """The aggregator's delta, in the model's dtypes.

    Plain updates go to ``aggregate``; partial sums (hosts' pre-aggregates, the
    secure sum), with any plain updates summed alongside, go to a linear rule's
    ``finalize``.
    """
    parts = [u for u in updates if isinstance(u, PartialSum)]
    plain = [u for u in updates if isinstance(u, ClientUpdate)]
    if not parts:
        delta, state, meas = aggregator.aggregate(plain, state, rng)
    else:
        finalize = getattr(aggregator, "finalize", None)
        if finalize is None or (plain and not isinstance(aggregator, LinearAggregator)):
            name = type(aggregator).__name__
            raise TypeError(f"partial sums need a linear aggregator, got {name}")
        if plain and isinstance(aggregator, LinearAggregator):
            parts.append(presum(plain, aggregator))
        delta, state, meas = finalize(combine(parts), state, rng)
    cast = [np.asarray(d).astype(p.dtype, copy=False) for d, p in zip(delta, params, strict=True)]
    return cast, state, meas


def fit_logs(updates: Sequence[ClientUpdate | PartialSum]) -> Logs:
    """Example-weighted training metrics (``fit/*``) from updates and partial sums."""
    parts = [u for u in updates if isinstance(u, PartialSum)]
    plain = [u for u in updates if isinstance(u, ClientUpdate)]
    if not parts:
        return weighted_logs(plain, "fit")
    total = combine([*parts, *([presum(plain, Mean())] if plain else [])])
    if total.num_examples <= 0:
        return {}
    return {f"fit/{k}": v / total.num_examples for k, v in sorted(total.metric_sums.items())}


def comm_logs(
    aggregator: Any, params: Params, sampled: int, sent: int, features: Sequence[Feature] = ()
) -> Logs:
    """``comm/*``: the round's uplink and downlink bytes, and the uplink's compression.

    ``sent`` clients each upload one encoded update: its size is the first feature's
    that states one (:meth:`~fedray.features.Feature.uplink_bytes`, top-k's), else the
    aggregator chain's (:func:`wire_bytes`); ``sampled`` clients each download the
    float model.
    """
    raw = sum(int(np.asarray(p).nbytes) for p in params)
    dim = sum(int(np.size(p)) for p in params)
    stated = (f.uplink_bytes(dim) for f in features)
    up = next((b for b in stated if b is not None), None)
    if up is None:
        up = wire_bytes(aggregator, params, max(sent, 1))
    return {
        "comm/bytes_up": float(up * sent),
        "comm/bytes_down": float(raw * sampled),
        "comm/compression": raw / up,
    }
