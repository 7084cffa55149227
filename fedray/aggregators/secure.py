"""Secure aggregation as an aggregator wrapper: the server sees only the sum.

SecAgg (Bonawitz et al., CCS 2017) with SecAgg+ neighbourhoods (Bell et al., CCS 2020);
the protocol itself is :mod:`fedray.secagg`. In the client host, ``encode`` runs the
inner aggregator's client step (e.g. DP clipping), L2-clips the update to ``clip`` and
quantizes every coordinate of ``[-clip, clip]`` to ``bits`` bits with unbiased
stochastic rounding; the host then masks the integers (its keys never leave it). On
the driver, after the protocol's unmasking round, :meth:`SecureAggregation.decode` turns
the integer sum into the float sum of the survivors' updates (a
:class:`~fedray.records.PartialSum`), and :meth:`SecureAggregation.finalize` hands it to
the inner linear rule's ``finalize`` (a uniform mean, or DP-FedAvg's noised sum:
central DP on top of secure aggregation). Masking is per client, before any sum.

With :class:`~fedray.aggregators.DistributedDP` inside, the hosts send its noised
integers instead (distributed DP: the unmasked sum already carries the whole noise),
the modulus is its own, and a round needs at least its ``min_survivors``.

Under central DP the quantized update must still have L2 norm at most C, the
sensitivity the noise is calibrated to. Stochastic rounding moves each coordinate by
less than one step, so the update is clipped to ``C - step sqrt(d)`` before it is
quantized: the decoded contribution then never exceeds C (bits too few for the
model's size are refused). The rounding coins come from ``secrets``, not the public
run seed. Rounds with fewer than ``min_clients`` clients abort before unmasking.

Measurements: ``secagg/clients`` (survivors), ``secagg/dropped`` and
``secagg/quantization_step``, plus the inner aggregator's.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from fedray import tree
from fedray.aggregators.base import zero_sum
from fedray.aggregators.clip import clip_to
from fedray.aggregators.distributed_dp import DistributedDP
from fedray.aggregators.dp import UNCLIPPED, CentralDP
from fedray.aggregators.mean import Mean
from fedray.records import AggState, ClientUpdate, Metrics, Params, PartialSum, RoundInfo
from fedray.secagg import Quantizer

if TYPE_CHECKING:
    from fedray.secagg.session import SecureSession


@dataclass(frozen=True)
class SecureAggregation:
    """Wraps a linear aggregator (uniform ``Mean`` or ``CentralDP``) with SecAgg(+).

    Attributes:
        inner: Receives the decoded sum through its ``finalize``.
        clip: L2 clip of each update, also the per-coordinate quantization range.
        bits: Quantization bits per coordinate.
        degree: Neighbours per client (SecAgg+'s k); None is 2 ceil(log2 n) + 2, and
            ``n - 1`` or more is the complete graph (plain SecAgg).
        threshold: Fraction of a neighbourhood (itself included) needed to unmask.
        min_clients: The smallest cohort whose sum is revealed; a round with fewer
            sampled or surviving clients aborts before any share is revealed.
    """

    inner: Mean | CentralDP | DistributedDP = field(
        default_factory=lambda: Mean(weighting="uniform")
    )
    clip: float = 1.0
    bits: int = 16
    degree: int | None = None
    threshold: float = 0.6
    min_clients: int = 3

    def __post_init__(self) -> None:
        if isinstance(self.inner, Mean) and self.inner.weighting != "uniform":
            raise ValueError(
                "secure aggregation reveals only a sum, without example counts; wrap "
                "Mean(weighting='uniform'), CentralDP or DistributedDP"
            )
        if not 0.5 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0.5, 1], got {self.threshold}")
        if isinstance(self.inner, CentralDP) and self.inner.rule.fixed_norm is None:
            raise ValueError("secure aggregation needs a fixed DP clip (adaptive is not supported)")
        Quantizer(self.clip, self.bits)  # validates
        if self.min_clients < 1:
            raise ValueError(f"min_clients must be >= 1, got {self.min_clients}")

    @property
    def private(self) -> bool:
        """Whether the inner aggregator is DP (its sensitivity must hold)."""
        return isinstance(self.inner, CentralDP | DistributedDP)

    @property
    def required_clients(self) -> int:
        """The fewest sampled or surviving clients whose sum may be unmasked."""
        if isinstance(self.inner, DistributedDP):
            return max(self.min_clients, self.inner.min_survivors)
        return self.min_clients

    def modulus_bits(self, clients: int) -> int:
        """r: the masked sum of ``clients`` vectors is computed mod 2^r."""
        if isinstance(self.inner, DistributedDP):
            return self.inner.modulus_bits
        return self.quantizer.modulus_bits(max(clients, 1))

    def l2_bound(self, dim: int) -> float:
        """The clip applied before quantizing, so the decoded update has norm <= clip.

        Without DP it is ``clip``; under central DP it is ``clip - step sqrt(dim)``
        (distributed DP bounds its own rounding).

        >>> round(SecureAggregation(inner=CentralDP(1.0, 10.0, 1.0), bits=16).l2_bound(100), 6)
        0.999695

        Raises:
            ValueError: ``bits`` are too few for ``dim`` coordinates (the margin would
                eat more than half of the clip).
        """
        if not isinstance(self.inner, CentralDP):
            return self.clip
        margin = self.quantizer.step * math.sqrt(dim)
        if margin > self.clip / 2:
            need = math.ceil(math.log2(4 * math.sqrt(dim) + 1))
            raise ValueError(
                f"privacy.secure_aggregation.bits={self.bits} is too coarse for a model of "
                f"{dim} parameters under privacy.dp: rounding could add {margin:.3g} to an "
                f"update's norm (clip {self.clip:g}); use bits >= {need}"
            )
        return self.clip - margin

    @property
    def quantizer(self) -> Quantizer:
        """The b-bit quantizer of ``[-clip, clip]``."""
        return Quantizer(self.clip, self.bits)

    def init(self, params: Params) -> AggState:
        """The inner state (under ``"inner"``) and the model's shapes."""
        return {
            "inner": self.inner.init(params),
            "shapes": [(tuple(p.shape), str(p.dtype)) for p in params],
        }

    def declares(self) -> dict[str, Any]:
        """``privacy.secure_aggregation.enabled``, for the rules."""
        return {"privacy.secure_aggregation.enabled": True}

    def uplink(self, shapes: list[tuple[int, ...]], clients: int) -> tuple[Any, int]:
        """R bits per coordinate of the masked vector (r grows with the clients summed)."""
        state = {"shapes": [(s, "") for s in shapes]}  # all dim() reads
        return shapes, math.ceil(self.dim(state) * self.modulus_bits(clients) / 8)

    def session(self) -> SecureSession:
        """The driver's side of a round (:mod:`fedray.secagg.session`)."""
        from fedray.secagg.session import SecureSession

        return SecureSession(self)

    def encode(self, update: ClientUpdate, info: RoundInfo) -> ClientUpdate:
        """In the host: inner client step, clip, quantize (the host then masks)."""
        if isinstance(self.inner, DistributedDP):
            ints = self.inner.encode_integers(update, info)
            levels = (ints & ((1 << self.inner.modulus_bits) - 1)).astype(np.uint64)
            return replace(update, delta=[], num_examples=1, metrics={}, masked=levels, protocol={})
        update = self.inner.encode(update, info)
        dim = sum(d.size for d in update.delta)
        delta, _ = clip_to(update.delta, self.l2_bound(dim))
        flat = tree.flatten(delta)
        bit = update.protocol.get(UNCLIPPED)
        if bit is not None:  # centred adaptive-clipping bit (±½), one more coordinate
            flat = np.append(flat, 2 * bit * self.clip)
        rng = (
            np.random.default_rng(secrets.randbits(128))  # coins the server cannot know
            if self.private
            else np.random.default_rng([info.seed, info.server_round, update.client_id, 17])
        )
        levels = self.quantizer.encode(flat, rng)
        return replace(update, delta=[], num_examples=1, metrics={}, masked=levels, protocol={})

    def dim(self, state: AggState) -> int:
        """Length of a client's masked vector (the weights, plus adaptive DP's bit)."""
        size = int(sum(math.prod(s) for s, _ in state["shapes"]))
        if isinstance(self.inner, DistributedDP):
            return self.inner.plan(size).padded
        adaptive = isinstance(self.inner, CentralDP) and self.inner.rule.fixed_norm is None
        return size + (1 if adaptive else 0)

    def decode(
        self, total: np.ndarray, survivors: Sequence[int], state: AggState, info: RoundInfo
    ) -> PartialSum:
        """The float sum of the survivors' updates, each counted once."""
        n = len(survivors)
        if isinstance(self.inner, DistributedDP):
            r = self.inner.modulus_bits
            values = total.astype(np.int64)
            values[values >= 1 << (r - 1)] -= 1 << r  # centred: [-2^(r-1), 2^(r-1))
            return self.inner.decode(values, survivors, state["inner"], info)
        values = self.quantizer.decode_sum(total, n)
        shapes = state["shapes"]
        size = sum(math.prod(s) for s, _ in shapes)
        protocol: dict[str, float] = {}
        if isinstance(self.inner, CentralDP) and values.size == size + 1:
            protocol[UNCLIPPED] = float(round(values[-1] / self.clip)) / 2  # Σ (b - ½)
        out = tree.unflatten(np.asarray(values[:size], np.float64), [s for s, _ in shapes])
        return PartialSum(tuple(sorted(survivors)), out, float(n), n, protocol_sums=protocol)

    def aggregate(
        self, updates: Sequence[ClientUpdate], state: AggState, rng: np.random.Generator
    ) -> tuple[Params, AggState, Metrics]:
        """No update at all: a zero sum of zero clients (DP-FedAvg still releases noise).

        Raises:
            ValueError: Given masked updates: their sum needs the protocol, which the
                driver runs (:meth:`session`) before :meth:`finalize`.
        """
        if updates:
            raise ValueError(
                "SecureAggregation.aggregate cannot sum masked updates; the driver runs the "
                f"protocol (session()) and hands finalize() the decoded sum, got {len(updates)}"
            )
        return self.finalize(zero_sum(state["shapes"]), state, rng)

    def finalize(
        self, total: PartialSum, state: AggState, rng: np.random.Generator
    ) -> tuple[Params, AggState, Metrics]:
        """Hand the decoded sum (from :meth:`decode`) to the inner linear rule."""
        delta, inner, meas = self.inner.finalize(total, state["inner"], rng)
        count = float(len(total.client_ids))
        size = int(sum(math.prod(s) for s, _ in state["shapes"]))
        step = (
            1 / self.inner.plan(size).scale
            if isinstance(self.inner, DistributedDP)
            else self.quantizer.step
        )
        meas = {**meas, "secagg/clients": count, "secagg/quantization_step": step}
        return delta, {**state, "inner": inner}, meas
