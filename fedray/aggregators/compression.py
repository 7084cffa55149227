"""Update compression as aggregator wrappers: quantize and rotate.

* :class:`Quantize`: b-bit unbiased stochastic rounding of each array over its own
  range (QSGD, Alistarh et al., NeurIPS 2017, arXiv:1610.02132).
* :class:`Rotate`: a randomized Hadamard rotation with the round's shared signs before
  the inner compression, undone after it, so that quantization sees a flat vector
  (Suresh, Yu, Kumar & McMahan, ICML 2017, arXiv:1611.00429).

Each ``encode`` runs in the host: it compresses the update, reconstructs what the server
would decode, and hands that to the inner aggregator's ``encode`` (DP's clip then comes
last, so the sensitivity the accountant assumes holds; clipping only rescales, which the
encoding carries as one more number). The arrays that travel in this simulation are the
reconstruction; :func:`wire_bytes` says how many bytes the encoded update takes, and
the loop logs it (``comm/bytes_up``). Top-k, which keeps a residual per client, is a
feature (:mod:`fedray.features.topk`).

Layer 1: numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from fedray import tree
from fedray.aggregators.base import Aggregator, chain, client_settings
from fedray.privacy.discrete import padded_dim, rotate, rotation_signs, unrotate
from fedray.records import AggState, ClientUpdate, Metrics, Params, RoundInfo

Shapes = list[tuple[int, ...]]
"""The shapes of the arrays that reach a link."""


def _coins(info: RoundInfo, cid: int, salt: int) -> np.random.Generator:
    return np.random.default_rng([info.seed, info.server_round, cid, info.attempt, salt])


def stochastic_round(x: np.ndarray, bits: int, rng: np.random.Generator) -> np.ndarray:
    """``x`` rounded to 2^bits levels over [min, max], unbiased (E[out] = x).

    >>> x = np.array([0.0, 0.25, 1.0])
    >>> stochastic_round(x, 1, np.random.default_rng(0)).tolist() in ([0, 0, 1], [0, 1, 1])
    True
    """
    lo, hi = float(x.min(initial=0.0)), float(x.max(initial=0.0))
    if hi == lo:
        return np.asarray(x, np.float64)
    step = (hi - lo) / (2**bits - 1)
    u = (x.astype(np.float64) - lo) / step
    low = np.floor(u)
    return np.asarray(lo + (low + (rng.random(u.shape) < (u - low))) * step, np.float64)


class _Wrapper:
    """Delegation shared by the compression wrappers."""

    inner: Aggregator

    def init(self, params: Params) -> AggState:
        """The inner state, under ``"inner"``."""
        return {"inner": self.inner.init(params)}

    def client_settings(self, state: AggState) -> dict[str, float]:
        """The inner aggregator's."""
        return client_settings(self.inner, state["inner"])

    def aggregate(
        self, updates: Sequence[ClientUpdate], state: AggState, rng: np.random.Generator
    ) -> tuple[Params, AggState, Metrics]:
        """The inner aggregate of the reconstructed updates."""
        delta, inner, meas = self.inner.aggregate(updates, state["inner"], rng)
        return delta, {**state, "inner": inner}, meas


@dataclass(frozen=True)
class Quantize(_Wrapper):
    """b-bit unbiased stochastic quantization of each array (``compression.quantize_bits``).

    Attributes:
        inner: Receives the reconstructed update.
        bits: Bits per coordinate, 1..16.
    """

    inner: Aggregator
    bits: int = 8

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 16:
            raise ValueError(f"compression.quantize_bits must be in [1, 16], got {self.bits}")

    def declares(self) -> dict[str, Any]:
        """``compression.quantize_bits``, for the rules."""
        return {"compression.quantize_bits": self.bits}

    def uplink(self, shapes: Shapes, clients: int) -> tuple[Shapes, int | None]:
        """B bits per coordinate, plus each array's range and the clip's scale (12 bytes)."""
        sizes = [math.prod(s) for s in shapes]
        return shapes, sum(math.ceil(n * self.bits / 8) for n in sizes) + 12 * len(sizes)

    def encode(self, update: ClientUpdate, info: RoundInfo) -> ClientUpdate:
        """In the host: quantize each array, then the inner client step."""
        rng = _coins(info, update.client_id, 31)
        delta = [stochastic_round(d, self.bits, rng).astype(d.dtype) for d in update.delta]
        return self.inner.encode(replace(update, delta=delta), info)


@dataclass(frozen=True)
class Rotate(_Wrapper):
    """Randomized Hadamard rotation around the inner compression (``compression.rotate``).

    Attributes:
        inner: Usually :class:`Quantize`: it compresses the rotated vector.
    """

    inner: Aggregator

    def declares(self) -> dict[str, Any]:
        """``compression.rotate``, for the rules."""
        return {"compression.rotate": True}

    def uplink(self, shapes: Shapes, clients: int) -> tuple[Shapes, int | None]:
        """One flat vector padded to a power of two; its inner link says how it is sent."""
        return [(padded_dim(sum(math.prod(s) for s in shapes)),)], None

    def encode(self, update: ClientUpdate, info: RoundInfo) -> ClientUpdate:
        """In the host: rotate the flat update, inner encode, rotate back."""
        flat = tree.flatten(update.delta)
        signs = rotation_signs(flat.size, info.seed, info.server_round)
        rotated = rotate(flat, signs)
        inner = self.inner.encode(replace(update, delta=[rotated.astype(np.float32)]), info)
        back = unrotate(tree.flatten(inner.delta), signs, flat.size)
        return replace(inner, delta=tree.unflatten_like(back, update.delta))


def wire_bytes(aggregator: Any, params: Params, clients: int = 1) -> int:
    """Bytes one client's encoded update takes on the way up.

    Each link of the chain, outermost first, may say how the update reaches it is sent
    (``uplink(shapes, clients) -> (shapes for its inner link, bytes or None)``):
    :class:`Quantize` sends b bits per coordinate plus its range (and the clip's
    scale), :class:`Rotate` pads to the next power of two for its inner link, secure
    aggregation sends r bits per coordinate of its masked vector (r grows with the
    ``clients`` summed). Without a link that says, float32 coordinates.

    >>> wire_bytes(Quantize(inner=None, bits=4), [np.zeros(10), np.zeros(6)])
    32
    """
    shapes: Shapes = [tuple(np.shape(p)) for p in params]
    for link in chain(aggregator):
        uplink = getattr(link, "uplink", None)  # optional: most links send what they get
        if uplink is None:
            continue
        shapes, size = uplink(shapes, clients)
        if size is not None:
            return int(size)
    return 4 * sum(math.prod(s) for s in shapes)
