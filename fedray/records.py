"""Plain values that travel between the driver and client hosts.

Layer 0: only numpy. Everything here is picklable and cheap to send through Ray's
object store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

Params = list[np.ndarray]
"""Model parameters: a list of arrays in Keras weight order."""

Metrics = dict[str, float]


@dataclass(frozen=True)
class RoundInfo:
    """What a client host needs to know about the round it trains in.

    Attributes:
        server_round: 1-based round number.
        seed: The run's seed; clients derive their own randomness from
            ``(seed, server_round, client_id)``.
        num_sampled: Number of clients sampled this round.
        attempt: 0 for a round's first try; ``k`` for its k-th retry after too few
            clients succeeded (see :class:`RoundPolicy`).
        dispatch: 0 for a client's first run in this attempt; ``k`` for its k-th
            re-execution after its host died mid-round (see :class:`HostRecovery`).
        settings: Per-round scalars the aggregator sends to clients with the round,
            from its ``client_settings`` hook (e.g. DP's adaptive clip norm).
    """

    server_round: int
    seed: int
    num_sampled: int = 0
    attempt: int = 0
    settings: dict[str, float] = field(default_factory=dict)
    dispatch: int = 0


@dataclass(frozen=True)
class ClientUpdate:
    """One client's contribution to a round.

    Attributes:
        client_id: Global id of the client, ``0 <= client_id < num_clients``.
        delta: ``local_weights - global_weights``, one array per model weight.
        num_examples: Training examples the client used (the FedAvg weight).
        metrics: Client-side training metrics, e.g. ``{"loss": 0.3}``; logged.
        protocol: Values for the aggregator, never logged: DP's centred unclipped
            bit, a decoded secure sum's client count, FedBuff's staleness.
        reports: One entry per feature of the strategy (:mod:`fedray.features`), by
            position: what its client half reported to its server half (SCAFFOLD's
            control-variate change), or None.
        masked: Under secure aggregation, the quantized and masked update (a flat
            integer vector mod 2^r); ``delta`` is then empty: the server never sees it.
    """

    client_id: int
    delta: Params
    num_examples: int
    metrics: Metrics = field(default_factory=dict)
    reports: tuple[Params | None, ...] = ()
    masked: np.ndarray | None = None
    protocol: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class PartialSum:
    """Several clients' updates, summed inside their host (pre-aggregation).

    A host whose aggregator is linear (:class:`~fedray.aggregators.base.LinearAggregator`)
    sends this one record instead of one update per client. Every update was encoded
    (clipped, noised) and validated on its own first.

    Attributes:
        client_ids: The clients whose updates are in the sum, ascending.
        total: ``sum_k w_k * delta_k`` in float64, ``w_k`` the aggregator's weight.
        weight: ``sum_k w_k``.
        num_examples: ``sum_k n_k``.
        metric_sums: ``sum_k n_k * m_k`` for the logged metrics every update has.
        protocol_sums: ``sum_k p_k`` for the protocol values every update has.
    """

    client_ids: tuple[int, ...]
    total: Params
    weight: float
    num_examples: int
    metric_sums: Metrics = field(default_factory=dict)
    protocol_sums: dict[str, float] = field(default_factory=dict)


FAILURE_CAUSES = {
    "crash": "crashed",  # the client's device dropped out (faults.crash_rate)
    "hang": "hung",  # the client's device stopped answering (faults.hang_rate)
    "error": "raised",  # the client's code raised an exception
    "nan": "NaN",  # its update was not finite
    "invalid": "invalid",  # wrong structure, count or norm
    "straggler": "straggler dropped",
    "timeout": "timed out",  # no result by runtime.round_timeout_s
    "host": "host lost",  # its host died and it could not be re-run in time
    "unavailable": "host down",  # its host was restarting or dead when the round began
    "secagg": "secure-aggregation dropout",
    "aborted": "in an aborted secure sum",  # too few survivors: nothing was unmasked
}
"""Why a client failed (``ClientFailure.cause``), with the words the round summary uses."""


@dataclass(frozen=True)
class ClientFailure:
    """A client that did not deliver a usable result this round.

    Attributes:
        client_id: Global id of the client.
        reason: Human-readable cause, e.g. ``"ValueError: nan in update"``.
        cause: One of :data:`FAILURE_CAUSES` (for the round summary and ``failures.csv``).
        host: Index of the host that served it, -1 when unknown.
        attempt: The round's attempt it failed in.
    """

    client_id: int
    reason: str
    cause: str = "error"
    host: int = -1
    attempt: int = 0

    def __post_init__(self) -> None:
        if self.cause not in FAILURE_CAUSES:
            raise ValueError(f"cause must be one of {sorted(FAILURE_CAUSES)}, got {self.cause!r}")


@dataclass(frozen=True)
class HostRecovery:
    """A host that died mid-round and whose unfinished clients were run again.

    Task re-execution, as Spark does it: the clients of a lost call are dispatched
    again (``RoundInfo.dispatch`` + 1) to the restarted host, and give the same
    updates, since their randomness comes from (seed, round, client id).

    Attributes:
        host: Index of the host that died.
        client_ids: The clients run again.
        reason: What killed it (first line).
        attempt: The round's attempt.
    """

    host: int
    client_ids: tuple[int, ...]
    reason: str
    attempt: int = 0


@dataclass(frozen=True)
class ClientEval:
    """Evaluation of the global model on one client's local test split."""

    client_id: int
    num_examples: int
    metrics: Metrics


@dataclass(frozen=True)
class MeanStates:
    """Every metric's ``(total, count)`` per batch over one part of the server test set.

    A metric that is a mean (Keras's loss tracker, accuracy: a ``keras.metrics.Mean``)
    is ``sum(total) / sum(count)`` over all batches; hosts evaluate parts of the test
    set side by side and :func:`merge_means` adds their batches in order.

    Attributes:
        names: The metrics, in column order.
        first_batch: Index of this part's first batch in the whole test set.
        totals: ``(batches, metrics)`` float64, each batch's sum of the metric.
        counts: ``(batches, metrics)`` float64, each batch's count (its weight).
    """

    names: tuple[str, ...]
    first_batch: int
    totals: np.ndarray
    counts: np.ndarray


def batch_range(batches: int, part: int, of: int) -> tuple[int, int]:
    """The batches ``[lo, hi)`` of part ``part`` when ``batches`` are cut into ``of`` parts.

    >>> [batch_range(10, p, 3) for p in range(3)]
    [(0, 3), (3, 6), (6, 10)]
    """
    return batches * part // of, batches * (part + 1) // of


def merge_means(parts: list[MeanStates]) -> Metrics:
    """Each metric over every batch of ``parts``, added in batch order (0 when no count).

    The batches are summed in one array in the test set's order, so the result is the
    same bit for bit however many parts there were and whichever host ran each.

    >>> a = MeanStates(("acc",), 0, np.array([[3.0]]), np.array([[4.0]]))
    >>> b = MeanStates(("acc",), 1, np.array([[1.0], [0.0]]), np.array([[4.0], [2.0]]))
    >>> merge_means([b, a])
    {'acc': 0.4}
    """
    ordered = sorted(parts, key=lambda p: p.first_batch)
    totals = np.concatenate([p.totals for p in ordered]).sum(axis=0)
    counts = np.concatenate([p.counts for p in ordered]).sum(axis=0)
    return {
        name: float(t / c) if c else 0.0
        for name, t, c in zip(ordered[0].names, totals, counts, strict=True)
    }


def check_gaussian(noise_multiplier: float, clip: float) -> None:
    """Refuse a Gaussian mechanism's impossible settings: z < 0 or C <= 0 (or NaN).

    >>> check_gaussian(1.0, 0.0)
    Traceback (most recent call last):
    ...
    ValueError: clip must be > 0, got 0.0
    """
    if not noise_multiplier >= 0:
        raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    if not clip > 0:
        raise ValueError(f"clip must be > 0, got {clip}")


@dataclass(frozen=True)
class Buffering:
    """Asynchronous buffered aggregation (FedBuff, Nguyen et al., AISTATS 2022).

    Attributes:
        concurrency: Clients kept training at once.
        buffer_size: Updates per server step.
    """

    concurrency: int = 10
    buffer_size: int = 5

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if not self.buffer_size >= 1:
            raise ValueError(f"buffer_size must be >= 1, got {self.buffer_size}")


@dataclass(frozen=True)
class RoundPolicy:
    """What a synchronous round does about slow and failing clients.

    Attributes:
        over_commit: Sample ``ceil(K * over_commit)`` extra clients on top of the ``K``
            the strategy samples and aggregate the first ``K`` valid updates to arrive;
            the rest are left to finish unseen (Bonawitz et al., "Towards Federated
            Learning at Scale", SysML 2019, over-selects by 30%).
        on_too_few: When fewer than ``min_fit_clients`` valid updates arrive:
            ``"retry"`` samples again (up to ``max_retries`` times) and then stops,
            ``"stop"`` stops at once, ``"skip"`` keeps the old model and goes on. A
            stop raises :class:`~fedray.errors.RoundFailedError` after the last
            checkpoint, so ``--resume`` loses nothing.
        max_retries: Extra attempts per round under ``"retry"``.
        max_update_norm: Reject (count as failed) any update whose L2 norm exceeds
            this; None accepts any finite norm.
    """

    over_commit: float = 0.0
    on_too_few: str = "retry"
    max_retries: int = 2
    max_update_norm: float | None = None

    def __post_init__(self) -> None:
        if not self.over_commit >= 0:
            raise ValueError(f"over_commit must be >= 0, got {self.over_commit}")
        if self.on_too_few not in ("retry", "stop", "skip"):
            raise ValueError(
                f"on_too_few must be 'retry', 'stop' or 'skip', got {self.on_too_few!r}"
            )
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.max_update_norm is not None and not self.max_update_norm > 0:
            raise ValueError(f"max_update_norm must be > 0, got {self.max_update_norm}")


FitResult = ClientUpdate | ClientFailure | PartialSum
"""What a host's ``fit`` returns per client (or, pre-aggregated, per host)."""

FitEvent = FitResult | HostRecovery
"""What an executor's ``fit`` yields: the hosts' results, and the re-executions it did."""

AggState = dict[str, Any]
"""Named aggregator / server-optimizer state (never a positional tuple)."""
