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
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from fedray import tree
from fedray.aggregators.base import client_settings, zero_sum
from fedray.aggregators.clip import clip_to
from fedray.aggregators.mean import Mean
from fedray.privacy.mechanism import DPMechanism
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

    inner: Any = field(default_factory=lambda: Mean(weighting="uniform"))
    clip: float = 1.0
    bits: int = 16
    degree: int | None = None
    threshold: float = 0.6
    min_clients: int = 3

    def __post_init__(self) -> None:
        # What the inner rule declares (the rules refuse these too, naming config keys).
        said: dict[str, Any] = getattr(self.inner, "declares", dict)()
        if said.get("strategy.weighting") == "examples":
            raise ValueError(
                "secure aggregation reveals only a sum, without example counts; wrap "
                "Mean(weighting='uniform'), CentralDP or DistributedDP"
            )
        if not 0.5 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0.5, 1], got {self.threshold}")
        if said.get("privacy.dp.clip") == "adaptive":
            raise ValueError("secure aggregation needs a fixed DP clip (adaptive is not supported)")
        Quantizer(self.clip, self.bits)  # validates
        if self.min_clients < 1:
            raise ValueError(f"min_clients must be >= 1, got {self.min_clients}")

    @property
    def private(self) -> bool:
        """Whether the inner aggregator is a DP mechanism (its sensitivity must hold)."""
        return isinstance(self.inner, DPMechanism)

    @property
    def codec(self) -> SecureCodec:
        """How updates become integers for the sum.

        The inner's own (``secure_codec``: distributed DP's noised integers), else
        b-bit quantization of ``[-clip, clip]``.
        """
        own = getattr(self.inner, "secure_codec", None)
        if own is not None:
            return own()  # type: ignore[no-any-return]
        return QuantizedCodec(self.inner, self.clip, self.bits, self.private)

    @property
    def required_clients(self) -> int:
        """The fewest sampled or surviving clients whose sum may be unmasked."""
        return max(self.min_clients, self.codec.min_survivors())

    def modulus_bits(self, clients: int) -> int:
        """r: the masked sum of ``clients`` vectors is computed mod 2^r."""
        return self.codec.modulus_bits(clients)

    def l2_bound(self, dim: int) -> float:
        """The norm an update is clipped to before it becomes integers (see the codec).

        >>> from fedray.aggregators import CentralDP
        >>> round(SecureAggregation(inner=CentralDP(1.0, 10.0, 1.0), bits=16).l2_bound(100), 6)
        0.999695

        Raises:
            ValueError: ``bits`` are too few for ``dim`` coordinates (the margin would
                eat more than half of the clip).
        """
        return self.codec.bound(dim)

    def check_model(self, dim: int) -> None:
        """Refuse a model of ``dim`` parameters that ``bits`` cannot quantize (:meth:`l2_bound`).

        Raises:
            ValueError: One line naming ``privacy.secure_aggregation.bits``.
        """
        self.l2_bound(dim)

    @property
    def quantizer(self) -> Quantizer:
        """The b-bit quantizer of ``[-clip, clip]``."""
        return Quantizer(self.clip, self.bits)

    def client_settings(self, state: AggState) -> dict[str, float]:
        """The inner rule's (DP's clip norm)."""
        return client_settings(self.inner, state["inner"])

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
        """In the host: the codec's integers (the host then masks them); nothing else."""
        levels = self.codec.encode(update, info)
        return replace(update, delta=[], num_examples=1, metrics={}, masked=levels, protocol={})

    def dim(self, state: AggState) -> int:
        """Length of a client's integer vector for the model of ``state``."""
        return self.codec.length(int(sum(math.prod(s) for s, _ in state["shapes"])))

    def decode(
        self, total: np.ndarray, survivors: Sequence[int], state: AggState, info: RoundInfo
    ) -> PartialSum:
        """The float sum of the survivors' updates, each counted once."""
        return self.codec.decode(total, survivors, state["shapes"], state["inner"], info)

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
        step = self.codec.step(int(sum(math.prod(s) for s, _ in state["shapes"])))
        meas = {**meas, "secagg/clients": count, "secagg/quantization_step": step}
        return delta, {**state, "inner": inner}, meas


Shapes = Sequence[tuple[tuple[int, ...], str]]


class SecureCodec(Protocol):
    """How a secure sum's updates become integers mod 2^r, and their sum a float sum.

    An inner aggregator with its own integers (distributed DP) gives one through an
    optional ``secure_codec()``; every other linear rule gets :class:`QuantizedCodec`.
    """

    def modulus_bits(self, clients: int) -> int:
        """R for a sum of ``clients`` vectors."""
        ...

    def min_survivors(self) -> int:
        """The fewest survivors whose sum may be unmasked (the codec's own bound)."""
        ...

    def bound(self, dim: int) -> float:
        """The L2 norm an update of ``dim`` coordinates is clipped to first."""
        ...

    def length(self, size: int) -> int:
        """Integers per client for a model of ``size`` parameters."""
        ...

    def encode(self, update: ClientUpdate, info: RoundInfo) -> np.ndarray:
        """In the host: the update's integers mod 2^r (uint64), before masking."""
        ...

    def decode(
        self,
        total: np.ndarray,
        survivors: Sequence[int],
        shapes: Shapes,
        inner_state: AggState,
        info: RoundInfo,
    ) -> PartialSum:
        """The float sum of the survivors' updates from the unmasked integer sum."""
        ...

    def step(self, size: int) -> float:
        """The decoded sum's resolution (logged as ``secagg/quantization_step``)."""
        ...


@dataclass(frozen=True)
class QuantizedCodec:
    """b-bit unbiased quantization of ``[-clip, clip]`` after the inner client step.

    Under DP (``private``) the update is clipped to ``clip - step sqrt(d)`` first, so
    the decoded contribution never exceeds the sensitivity, and the rounding coins
    come from ``secrets``.
    """

    inner: Any
    clip: float
    bits: int
    private: bool

    @property
    def quantizer(self) -> Quantizer:
        """The b-bit quantizer of ``[-clip, clip]``."""
        return Quantizer(self.clip, self.bits)

    def modulus_bits(self, clients: int) -> int:
        """Enough bits for the sum of ``clients`` quantized vectors."""
        return self.quantizer.modulus_bits(max(clients, 1))

    def min_survivors(self) -> int:
        """No bound of its own."""
        return 1

    def bound(self, dim: int) -> float:
        """``clip``; under DP ``clip - step sqrt(dim)`` (refused when bits are too few)."""
        if not self.private:
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

    def length(self, size: int) -> int:
        """One integer per parameter."""
        return size

    def encode(self, update: ClientUpdate, info: RoundInfo) -> np.ndarray:
        """Inner client step, clip, quantize."""
        update = self.inner.encode(update, info)
        dim = sum(d.size for d in update.delta)
        delta, _ = clip_to(update.delta, self.bound(dim))
        rng = (
            np.random.default_rng(secrets.randbits(128))  # coins the server cannot know
            if self.private
            else np.random.default_rng([info.seed, info.server_round, update.client_id, 17])
        )
        return self.quantizer.encode(tree.flatten(delta), rng)

    def decode(
        self,
        total: np.ndarray,
        survivors: Sequence[int],
        shapes: Shapes,
        inner_state: AggState,
        info: RoundInfo,
    ) -> PartialSum:
        """The dequantized sum of the survivors."""
        n = len(survivors)
        values = self.quantizer.decode_sum(total, n)
        out = tree.unflatten(np.asarray(values, np.float64), [s for s, _ in shapes])
        return PartialSum(tuple(sorted(survivors)), out, float(n), n)

    def step(self, size: int) -> float:
        """One quantization step."""
        return self.quantizer.step
