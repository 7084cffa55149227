"""Distributed DP: each client noises its own share inside secure aggregation.

Distributed discrete Gaussian (Kairouz, Liu & Steinke, ICML 2021, arXiv:2102.06387) and
Skellam (Agarwal, Kairouz & Liu, NeurIPS 2021, arXiv:2110.04995). The math and the
accountant are :mod:`fedray.privacy.distributed`; this is the aggregator that runs it.

In the host, :meth:`DistributedDP.encode_integers` clips the update to C, rotates it
(randomized Hadamard with the round's public signs), scales it by gamma, rounds it
conditionally to integers of norm at most B and adds the client's integer noise share
(std ``z B / sqrt(m_min)``, from ``secrets`` unless ``noise_seed`` is set).
:class:`~fedray.aggregators.SecureAggregation` masks the integers mod 2^r, so the server
unmasks only the noised sum. :meth:`decode` centres it, divides by gamma and
rotates it back; :meth:`finalize` divides by the expected cohort m (no noise is added
on the server). Only secure aggregation may carry it: without it the server would see
each client's weakly noised update (:func:`fedray.strategy.rules.check_compatible` refuses it).

Measurements: ``dp/clip``, ``dp/noise_std`` (on the mean), ``ddp/scale`` (gamma),
``ddp/inflation`` (B / (gamma C): the noise added over central DP's z C) and
``ddp/min_survivors``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from fedray import tree
from fedray.aggregators.base import Unweighted
from fedray.aggregators.clip import clip_to
from fedray.aggregators.dp import _noise_rng
from fedray.privacy.discrete import (
    conditional_round,
    discrete_gaussian,
    rotate,
    rotation_signs,
    skellam,
    unrotate,
)
from fedray.privacy.distributed import DistributedPlan, Mechanism
from fedray.privacy.ledgers import DistributedDPAccountant
from fedray.privacy.mechanism import RunFacts
from fedray.records import AggState, ClientUpdate, Metrics, Params, PartialSum, RoundInfo


@dataclass(frozen=True)
class DistributedDP(Unweighted):
    """Client-side discrete noise whose sum over the survivors is the whole noise.

    Attributes:
        noise_multiplier: z: the total noise std over the sensitivity B.
        expected_clients: m = qN, the denominator of the mean.
        population: N, the registered clients.
        clip: L2 clip norm C.
        mechanism: ``"skellam"`` or ``"discrete_gaussian"``.
        bits: Bits per client of the modular range (see :class:`DistributedPlan`).
        max_dropout: Worst-case fraction of a cohort that may drop out; fewer
            survivors than ``(1 - max_dropout) m`` abort the round before unmasking.
        noise_seed: None draws rounding coins and noise from ``secrets``; an int makes
            them reproducible (tests only: anyone who knows it can remove the noise).
    """

    noise_multiplier: float
    expected_clients: float
    population: int
    clip: float = 1.0
    mechanism: Mechanism = "skellam"
    bits: int = 22
    max_dropout: float = 0.1
    noise_seed: int | None = None
    privacy_mode: ClassVar[str] = "distributed"

    def __post_init__(self) -> None:
        self.plan(1)  # validates

    def accountant(self, facts: RunFacts) -> Any:
        """Distributed DP's ledger: each client's releases, priced for this model's size.

        Raises:
            ValueError: ``facts`` lacks the model's size.
        """
        if facts.dim is None:
            raise ValueError("distributed DP's ledger needs the model's size")
        return DistributedDPAccountant(
            plan=self.plan(facts.dim),
            delta=facts.delta,
            max_epsilon=facts.max_epsilon,
            planned_rounds=facts.planned_rounds,
        )

    def plan(self, dim: int) -> DistributedPlan:
        """The parameters for a model of ``dim`` coordinates (both sides derive them)."""
        return _cached(
            DistributedPlan(
                mechanism=self.mechanism,
                noise_multiplier=self.noise_multiplier,
                clip=self.clip,
                dim=dim,
                bits=self.bits,
                expected_clients=self.expected_clients,
                population=self.population,
                max_dropout=self.max_dropout,
            )
        )

    @property
    def modulus_bits(self) -> int:
        """r: secure aggregation sums the integers mod 2^r."""
        return self.plan(1).modulus_bits

    @property
    def min_survivors(self) -> int:
        """m_min: a round with fewer survivors aborts before anything is unmasked."""
        return self.plan(1).min_survivors

    def secure_codec(self) -> IntegerCodec:
        """Secure aggregation's codec: this mechanism's own noised integers."""
        return IntegerCodec(self)

    def init(self, params: Params) -> AggState:
        """The model's shapes."""
        return {"shapes": [(tuple(p.shape), str(p.dtype)) for p in params]}

    def encode(self, update: ClientUpdate, info: RoundInfo) -> ClientUpdate:
        """In the host: clip to C and withhold metrics and counts (before the integers)."""
        delta, _ = clip_to(update.delta, self.clip)
        return replace(update, delta=delta, num_examples=1, metrics={}, protocol={})

    def encode_integers(self, update: ClientUpdate, info: RoundInfo) -> np.ndarray:
        """In the host: the client's noised integer vector (int64, length d')."""
        update = self.encode(update, info)
        flat = tree.flatten(update.delta)
        plan = self.plan(flat.size)
        signs = rotation_signs(flat.size, info.seed, info.server_round)
        rng = _noise_rng(self.noise_seed, info, update.client_id)
        scaled = rotate(flat, signs) * plan.scale
        ints = conditional_round(scaled, plan.sensitivity, rng)
        if self.mechanism == "skellam":
            noise = skellam(plan.local_std**2 / 2, ints.size, rng)
        else:
            noise = discrete_gaussian(plan.local_std, ints.size, rng)
        return np.asarray(ints + noise, np.int64)

    def decode(
        self, values: np.ndarray, survivors: Sequence[int], state: AggState, info: RoundInfo
    ) -> PartialSum:
        """The float sum of the survivors' updates (noised) from the centred integer sum.

        Args:
            values: The integer sum, already centred in ``[-2^(r-1), 2^(r-1))``.
            survivors: The clients whose shares it holds.
            state: From :meth:`init`.
            info: The round (its rotation).
        """
        shapes = state["shapes"]
        size = int(sum(math.prod(s) for s, _ in shapes))
        plan = self.plan(size)
        signs = rotation_signs(size, info.seed, info.server_round)
        flat = unrotate(np.asarray(values, np.float64) / plan.scale, signs, size)
        out = tree.unflatten(flat, [s for s, _ in shapes])
        n = len(survivors)
        return PartialSum(tuple(sorted(survivors)), out, float(n), n)

    def finalize(
        self, total: PartialSum, state: AggState, rng: np.random.Generator
    ) -> tuple[Params, AggState, Metrics]:
        """The noised sum over the fixed m; nothing is added on the server."""
        shapes = state["shapes"]
        size = int(sum(math.prod(s) for s, _ in shapes))
        plan = self.plan(max(size, 1))
        m = self.expected_clients
        delta = [
            (np.asarray(t, np.float64) / m).astype(dt)
            for t, (_, dt) in zip(total.total, shapes, strict=True)
        ]
        # The survivors' shares: at least sigma^2 (m_min of them), more when fewer dropped.
        survivors = max(len(total.client_ids), plan.min_survivors)
        actual = plan.local_std * math.sqrt(survivors)
        meas: Metrics = {
            "dp/clip": self.clip,
            "dp/noise_std": actual / plan.scale / m,
            "ddp/scale": plan.scale,
            "ddp/inflation": plan.inflation,
            "ddp/min_survivors": float(plan.min_survivors),
        }
        return delta, state, meas


@dataclass(frozen=True)
class IntegerCodec:
    """How secure aggregation carries distributed DP's noised integers (its codec).

    The modulus and the fewest survivors are the mechanism's; the unmasked sum is
    centred in ``[-2^(r-1), 2^(r-1))`` and handed to :meth:`DistributedDP.decode`.
    """

    ddp: DistributedDP

    def modulus_bits(self, clients: int) -> int:
        """The mechanism's r, whatever the cohort."""
        return self.ddp.modulus_bits

    def min_survivors(self) -> int:
        """m_min: fewer survivors would leave the sum under-noised."""
        return self.ddp.min_survivors

    def bound(self, dim: int) -> float:
        """The mechanism's clip (its rounding is bounded by its own plan)."""
        return self.ddp.clip

    def length(self, size: int) -> int:
        """The rotated, padded length."""
        return self.ddp.plan(size).padded

    def encode(self, update: ClientUpdate, info: RoundInfo) -> np.ndarray:
        """The client's noised integers mod 2^r."""
        ints = self.ddp.encode_integers(update, info)
        return (ints & ((1 << self.ddp.modulus_bits) - 1)).astype(np.uint64)

    def decode(
        self,
        total: np.ndarray,
        survivors: Sequence[int],
        shapes: Sequence[tuple[tuple[int, ...], str]],
        inner_state: AggState,
        info: RoundInfo,
    ) -> PartialSum:
        """The centred integer sum, decoded by the mechanism."""
        r = self.ddp.modulus_bits
        values = total.astype(np.int64)
        values[values >= 1 << (r - 1)] -= 1 << r  # centred: [-2^(r-1), 2^(r-1))
        return self.ddp.decode(values, survivors, inner_state, info)

    def step(self, size: int) -> float:
        """One integer of the sum, in the update's units."""
        return 1 / self.ddp.plan(size).scale


@functools.lru_cache(maxsize=64)
def _cached(plan: DistributedPlan) -> DistributedPlan:
    """One plan per parameter set, its scale searched once."""
    _ = plan.scale
    return plan
