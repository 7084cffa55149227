"""The aggregator protocol, shared by every aggregation rule and wrapper.

An aggregator has three pure methods:

* ``init(params) -> state`` once, on the driver;
* ``encode(update, info) -> update`` inside the client host, before the update
  leaves it (clipping, masking and local noise live here);
* ``aggregate(updates, state, rng) -> (delta, state, measurements)`` on the driver.

Wrappers hold an ``inner`` aggregator and add exactly one concern. Measurements
are reported to callbacks and never mixed into the parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from fedray.records import AggState, ClientUpdate, Metrics, Params, RoundInfo


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
