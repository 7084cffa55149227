"""The aggregator protocol, shared by every aggregation rule and wrapper.

An aggregator has three pure methods:

* ``init(params) -> state`` once, on the driver;
* ``encode(update, info) -> update`` inside the client host, before the update
  leaves it (clipping, masking and local noise live here);
* ``aggregate(updates, state, rng) -> (delta, state, measurements)`` on the driver.

An aggregator whose result depends on the updates only through a weighted sum (and
the sums of their ``protocol`` values) is a :class:`LinearAggregator`: hosts may then
send one pre-aggregated sum for all their clients (:mod:`fedray.aggregators.presum`)
instead of every update, and secure aggregation can hand it its decoded sum.

One optional hook says what the aggregator sends with each round:
``client_settings(state) -> {name: float}``, per-round scalars for the clients'
``encode`` (``RoundInfo.settings``; DP's adaptive clip norm). What an algorithm sends
and keeps beyond the update rule (SCAFFOLD's variates, top-k's residual) is a feature's
(:mod:`fedray.features`).

Wrappers hold an ``inner`` aggregator, add exactly one concern, and pass the hook
through. Measurements are reported to callbacks and never mixed into the parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from fedray.records import AggState, ClientUpdate, Metrics, Params, PartialSum, RoundInfo


@runtime_checkable
class Aggregator(Protocol):
    """Combines client updates into one global delta."""

    def init(self, params: Params) -> AggState:
        """Return the initial state for a model with ``params``."""
        ...

    def encode(self, update: ClientUpdate, info: RoundInfo) -> ClientUpdate:
        """Transform one update inside its client host before it is sent."""
        ...

    def aggregate(
        self, updates: Sequence[ClientUpdate], state: AggState, rng: np.random.Generator
    ) -> tuple[Params, AggState, Metrics]:
        """Combine ``updates`` into one delta; returns ``(delta, state, measurements)``."""
        ...


class LinearAggregator:
    """A rule whose result depends on the updates only through their weighted sum.

    Subclasses give ``weight`` (``w_k`` of one encoded update) and ``finalize``,
    which turns a :class:`~fedray.records.PartialSum` (``sum_k w_k * delta_k``,
    ``sum_k w_k``, the client ids and the sums of the protocol values) into the
    delta. ``aggregate`` is ``finalize`` of the updates' sum, so the three ways a sum
    reaches the server end in one method: plain updates summed on the driver, hosts'
    pre-aggregated sums (:mod:`fedray.aggregators.presum`) and secure aggregation's
    decoded sum. The delta is float64; the loop casts it to the model's dtypes.
    """

    def weight(self, update: ClientUpdate) -> float:
        """``w_k`` of one encoded update in the sum."""
        raise NotImplementedError

    def weighs_by(self) -> str:
        """What ``w_k`` is, for the run's summary: ``"examples"`` or ``"uniform"``."""
        raise NotImplementedError

    def finalize(
        self, total: PartialSum, state: AggState, rng: np.random.Generator
    ) -> tuple[Params, AggState, Metrics]:
        """The delta from the sum of the updates; returns ``(delta, state, measurements)``."""
        raise NotImplementedError

    def empty(self, state: AggState) -> PartialSum:
        """The sum of no update (a rule that can release nothing refuses it).

        Raises:
            ValueError: Always, unless the rule overrides it.
        """
        raise ValueError(f"{type(self).__name__} needs at least one update, got 0")

    def aggregate(
        self, updates: Sequence[ClientUpdate], state: AggState, rng: np.random.Generator
    ) -> tuple[Params, AggState, Metrics]:
        """``finalize`` of the weighted sum of ``updates`` (float64, by client id).

        The delta has the updates' dtypes.
        """
        from fedray.aggregators.presum import presum

        if not updates:
            return self.finalize(self.empty(state), state, rng)
        delta, state, meas = self.finalize(presum(updates, self), state, rng)
        like = updates[0].delta  # the updates' dtypes
        cast = [np.asarray(d).astype(r.dtype) for d, r in zip(delta, like, strict=True)]
        return cast, state, meas


def zero_sum(shapes: Sequence[tuple[tuple[int, ...], str]]) -> PartialSum:
    """The sum of no update for a model of these ``(shape, dtype)`` arrays.

    >>> zero_sum([((2,), "float32")]).total[0].tolist()
    [0.0, 0.0]
    """
    return PartialSum((), [np.zeros(s, np.float64) for s, _ in shapes], 0.0, 0)


def client_settings(aggregator: Aggregator, state: AggState) -> dict[str, float]:
    """The per-round scalars ``aggregator`` sends to clients ({} without the hook).

    A wrapper passes its inner's on with its own hook, from wherever it keeps the inner
    state; :class:`~fedray.strategy.Strategy` refuses a wrapper that would drop them.

    >>> from fedray.aggregators import Mean
    >>> client_settings(Mean(), {})
    {}
    """
    hook = getattr(aggregator, "client_settings", None)
    return {} if hook is None else dict(hook(state))


def chain(aggregator: Any) -> list[Any]:
    """The aggregator and every aggregator it wraps (through ``inner``), outermost first.

    >>> from fedray.aggregators import Median, NormBound
    >>> [type(a).__name__ for a in chain(NormBound(Median()))]
    ['NormBound', 'Median']
    """
    links = []
    current = aggregator
    while current is not None:
        links.append(current)
        current = getattr(current, "inner", None)
    return links


def drops_settings(links: Sequence[Any]) -> tuple[Any, Any] | None:
    """A wrapper without a ``client_settings`` hook above a link that sends settings.

    ``links`` is a chain, outermost first. Returns ``(wrapper, sender)`` or None. A
    sender is a link with the hook and no ``inner`` (DP's adaptive clip): its clients
    would clip to a stale norm while the server adapts.
    """
    for i, link in enumerate(links):
        if getattr(link, "client_settings", None) is not None:
            continue
        for below in links[i + 1 :]:
            if getattr(below, "client_settings", None) is not None and not hasattr(below, "inner"):
                return link, below
    return None


class SameState:
    """For wrappers whose state is their ``inner`` aggregator's, unchanged.

    Supplies ``init``, ``encode`` and the hook by delegation, so a wrapper that
    adds one server-side concern (clipping, staleness weights) writes only its
    ``aggregate``.
    """

    inner: Aggregator

    def init(self, params: Params) -> AggState:
        """The inner state."""
        return self.inner.init(params)

    def encode(self, update: ClientUpdate, info: RoundInfo) -> ClientUpdate:
        """Delegates to the inner aggregator (this wrapper works on the server)."""
        return self.inner.encode(update, info)

    def client_settings(self, state: AggState) -> dict[str, float]:
        """The inner aggregator's (the state is the inner state)."""
        return client_settings(self.inner, state)


class Unweighted(LinearAggregator):
    """For linear rules whose sum counts every update once (``w_k = 1``)."""

    def weight(self, update: ClientUpdate) -> float:
        """Every update counts once: the sum is unweighted (example counts are private)."""
        return 1.0

    def weighs_by(self) -> str:
        """Every client alike."""
        return "uniform"
