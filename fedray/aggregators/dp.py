"""Client-level differential privacy as aggregators: central DP-FedAvg and local DP.

* :class:`CentralDP`: DP-FedAvg (McMahan, Ramage, Talwar, Zhang, ICLR 2018,
  arXiv:1710.06963). Clients clip their update to L2 norm C inside the host
  (``encode``); the driver sums the clipped updates, adds N(0, (z C)^2) per coordinate
  and divides by the *expected* number of clients m = qN, never the realised one.
  Weights are uniform. C comes from a clip rule, one of two objects:
  :class:`FixedClip` (C never changes) or :class:`AdaptiveClip` (Andrew, Thakkar,
  McMahan, Ramaswamy, NeurIPS 2021, arXiv:1905.03871): clients report whether their update was
  unclipped as the *centred* bit ``b - 1/2`` (sensitivity ½, as in TF-Privacy's
  ``QuantileEstimatorQuery``, so a count noised with std σ_b costs the multiplier
  2σ_b); the driver forms ``b̄ = clamp((Σ(b - ½) + N(0, σ_b²)) / m + ½, 0, 1)``, which
  moves C geometrically toward the target quantile γ: ``C <- C exp(-η (b̄ - γ))``
  (more unclipped than wanted shrinks C).
* :class:`LocalDP`: each client clips and noises its own update before it leaves the
  host; the server averages the noised updates.

Noise on the driver comes from the ``rng`` the driver passes: a fresh generator per
round seeded from ``secrets`` (or derived from ``privacy.dp.noise_seed``), never
checkpointed and never the sampling generator or global numpy state.
Measurements: ``dp/clip``, ``dp/noise_std`` (on the mean) and, when adaptive,
``dp/unclipped_fraction`` (the noised estimate).
"""

from __future__ import annotations

import math
import numbers
import secrets
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Protocol

import numpy as np

from fedray.aggregators.base import Unweighted, zero_sum
from fedray.aggregators.clip import clip_to
from fedray.privacy.accounting import split_noise
from fedray.privacy.ledgers import DPFedAvgAccountant, LocalDPAccountant
from fedray.privacy.mechanism import RunFacts
from fedray.records import (
    AggState,
    ClientUpdate,
    Metrics,
    Params,
    PartialSum,
    RoundInfo,
    check_gaussian,
)

UNCLIPPED = "dp_unclipped"  # a protocol value (ClientUpdate.protocol): never logged


class ClipRule(Protocol):
    """How :class:`CentralDP`'s clip norm C is chosen each round."""

    @property
    def initial(self) -> float:
        """C of the first round."""
        ...

    @property
    def fixed_norm(self) -> float | None:
        """C when it never changes, else None."""
        ...

    def bits_stddev(self, expected_clients: float) -> float:
        """σ_b, the noise on the clients' reported bits (0: they report none)."""
        ...

    def report(self, norm: float, clip: float) -> dict[str, float]:
        """What a client whose update had ``norm`` reports beside it (protocol values)."""
        ...

    def adapt(
        self, clip: float, centred: float, expected_clients: float, rng: np.random.Generator | None
    ) -> tuple[float, Metrics]:
        """Next round's C from the sum of the reported bits; and measurements.

        The sum is noised from ``rng``; None leaves it un-noised (z = 0).
        """
        ...


@dataclass(frozen=True)
class FixedClip:
    """A fixed L2 clip norm C (DP-FedAvg's).

    Attributes:
        norm: C > 0.
    """

    norm: float = 1.0

    def __post_init__(self) -> None:
        if not self.norm > 0:
            raise ValueError(f"clip must be > 0, got {self.norm}")

    @property
    def initial(self) -> float:
        """C."""
        return float(self.norm)

    @property
    def fixed_norm(self) -> float:
        """C."""
        return float(self.norm)

    def bits_stddev(self, expected_clients: float) -> float:
        """Clients report nothing."""
        return 0.0

    def report(self, norm: float, clip: float) -> dict[str, float]:
        """Nothing."""
        return {}

    def adapt(
        self, clip: float, centred: float, expected_clients: float, rng: np.random.Generator | None
    ) -> tuple[float, Metrics]:
        """C, unchanged."""
        return clip, {}


@dataclass(frozen=True)
class AdaptiveClip:
    """Adaptive clip-norm settings (defaults from Andrew et al. 2021).

    Attributes:
        initial: C_0.
        target_quantile: γ, the fraction of updates that should be left unclipped.
        learning_rate: η of the geometric update.
        count_stddev: σ_b, the noise on the unclipped count; default m / 20.
    """

    initial: float = 0.1
    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_stddev: float | None = None

    def __post_init__(self) -> None:
        if not self.initial > 0:
            raise ValueError(f"initial clip must be > 0, got {self.initial}")
        if not 0 < self.target_quantile < 1:
            raise ValueError(f"target_quantile must be in (0, 1), got {self.target_quantile}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.count_stddev is not None and not self.count_stddev > 0:
            raise ValueError(
                f"count_stddev must be > 0 (None: expected clients / 20), got {self.count_stddev}"
            )

    @property
    def fixed_norm(self) -> None:
        """C adapts."""
        return None

    def bits_stddev(self, expected_clients: float) -> float:
        """σ_b: ``count_stddev``, else m / 20."""
        given = self.count_stddev
        return expected_clients / 20 if given is None else float(given)

    def report(self, norm: float, clip: float) -> dict[str, float]:
        """The centred unclipped bit ``b - ½`` (sensitivity ½)."""
        return {UNCLIPPED: float(norm <= clip) - 0.5}

    def adapt(
        self, clip: float, centred: float, expected_clients: float, rng: np.random.Generator | None
    ) -> tuple[float, Metrics]:
        """``C exp(-η (b̄ - γ))`` from the noised centred count ``Σ (b - ½) + N(0, σ_b²)``."""
        m = expected_clients
        noised = centred + (0.0 if rng is None else rng.normal(0.0, self.bits_stddev(m)))
        frac = float(np.clip(noised / m + 0.5, 0.0, 1.0))
        new_clip = next_clip(clip, frac, self.target_quantile, self.learning_rate)
        return new_clip, {"dp/unclipped_fraction": frac}


def next_clip(clip: float, unclipped_fraction: float, target: float, lr: float) -> float:
    """The geometric update ``C exp(-lr (b̄ - γ))`` with b̄ the *unclipped* fraction.

    Too many unclipped updates (b̄ > γ) shrink C; too few grow it.

    >>> next_clip(1.0, 0.5, 0.5, 0.2)
    1.0
    >>> next_clip(1.0, 1.0, 0.5, 0.2) < 1.0 < next_clip(1.0, 0.0, 0.5, 0.2)
    True
    """
    return float(clip * math.exp(-lr * (unclipped_fraction - target)))


def _noise_rng(seed: int | None, info: RoundInfo, cid: int) -> np.random.Generator:
    if seed is None:
        return np.random.default_rng(secrets.randbits(128))
    return np.random.default_rng([seed, info.server_round, cid, info.attempt, 11])


@dataclass(frozen=True)
class CentralDP(Unweighted):
    """DP-FedAvg: client-side clipping, Gaussian noise on the sum, fixed denominator m.

    Attributes:
        noise_multiplier: z >= 0 (total; with adaptive clipping part of it noises the
            unclipped count, see :func:`~fedray.privacy.accounting.split_noise`).
        expected_clients: m = qN, the denominator.
        clip: The clip rule: :class:`FixedClip` (a number is one) or
            :class:`AdaptiveClip`.
    """

    noise_multiplier: float
    expected_clients: float
    clip: float | FixedClip | AdaptiveClip = 1.0
    privacy_mode: ClassVar[str] = "central"

    def __post_init__(self) -> None:
        if not self.noise_multiplier >= 0:
            raise ValueError(f"noise_multiplier must be >= 0, got {self.noise_multiplier}")
        if not self.expected_clients > 0:
            raise ValueError(f"expected_clients must be > 0, got {self.expected_clients}")
        if isinstance(self.clip, numbers.Real):  # a number (numpy's too) is a fixed clip
            object.__setattr__(self, "clip", FixedClip(float(self.clip)))
        if self.count_stddev > 0:
            split_noise(self.noise_multiplier, self.count_stddev)  # raises when impossible

    @property
    def rule(self) -> ClipRule:
        """The clip rule (``clip``, a number made a :class:`FixedClip`)."""
        return self.clip  # type: ignore[return-value]

    @property
    def count_stddev(self) -> float:
        """σ_b of the clients' reported bits (0 for a fixed clip; m / 20 by default)."""
        return self.rule.bits_stddev(self.expected_clients)

    def accountant(self, facts: RunFacts) -> Any:
        """DP-FedAvg's ledger: one sampled Gaussian per round (two when C adapts)."""
        adaptive = self.count_stddev > 0
        return DPFedAvgAccountant(
            noise_multiplier=self.noise_multiplier,
            sampling_rate=facts.sampling_rate,
            delta=facts.delta,
            sampling=facts.sampling,  # type: ignore[arg-type]
            population=facts.population,
            count_noise_multiplier=2 * self.count_stddev if adaptive else None,
            max_epsilon=facts.max_epsilon,
            planned_rounds=facts.planned_rounds,
        )

    @property
    def update_noise_multiplier(self) -> float:
        """z_Δ, the multiplier of the noise on the updates' sum."""
        if self.count_stddev > 0:
            return split_noise(self.noise_multiplier, self.count_stddev)
        return self.noise_multiplier

    def init(self, params: Params) -> AggState:
        """The clip norm (sent to clients each round) and the model's shapes."""
        return {
            "round_settings": {"dp_clip": self.rule.initial},
            "shapes": [(tuple(p.shape), str(p.dtype)) for p in params],
        }

    def declares(self) -> dict[str, Any]:
        """``privacy.dp.clip='adaptive'`` when C adapts, for the rules."""
        return {} if self.rule.fixed_norm is not None else {"privacy.dp.clip": "adaptive"}

    def client_settings(self, state: AggState) -> dict[str, float]:
        """This round's clip norm C, for the clients' ``encode`` (``dp_clip``)."""
        return {"dp_clip": float(state["round_settings"]["dp_clip"])}

    def encode(self, update: ClientUpdate, info: RoundInfo) -> ClientUpdate:
        """In the host: clip to this round's C; report only the centred unclipped bit.

        Training metrics and the example count are withheld: under DP the server sees
        nothing of a client but its clipped update (and, adaptively, ``b - ½``).
        """
        clip = float(info.settings.get("dp_clip", self.rule.initial))
        delta, norm = clip_to(update.delta, clip)
        protocol = self.rule.report(norm, clip)
        return replace(update, delta=delta, num_examples=1, metrics={}, protocol=protocol)

    def empty(self, state: AggState) -> PartialSum:
        """Nobody took part: a zero sum, still noised and released."""
        return zero_sum(state["shapes"])

    def finalize(
        self, total: PartialSum, state: AggState, rng: np.random.Generator
    ) -> tuple[Params, AggState, Metrics]:
        """(Σ clipped + N(0, (z_Δ C)^2)) / m; adapt C from the noised centred count.

        The sum may come from the driver, from hosts' pre-aggregates or from secure
        aggregation; the denominator is always the fixed expected count ``m``.
        """
        clip = float(state["round_settings"]["dp_clip"])
        shapes = state["shapes"]
        sigma = self.update_noise_multiplier * clip
        m = self.expected_clients
        delta = [
            (
                (np.asarray(t, np.float64) + (rng.normal(0.0, sigma, t.shape) if sigma else 0)) / m
            ).astype(dt)
            for t, (_, dt) in zip(total.total, shapes, strict=True)
        ]
        meas: Metrics = {"dp/clip": clip, "dp/noise_std": sigma / m}
        centred = total.protocol_sums.get(UNCLIPPED, 0.0)  # Σ (b - ½): sensitivity ½
        new_clip, more = self.rule.adapt(clip, centred, m, rng if self.noise_multiplier else None)
        new_state = {**state, "round_settings": {"dp_clip": new_clip}}
        return delta, new_state, {**meas, **more}


@dataclass(frozen=True)
class LocalDP(Unweighted):
    """Local DP: each client clips to C and adds N(0, (z C)^2) before sending.

    Attributes:
        noise_multiplier: z_l >= 0 (per client, on its own update).
        clip: L2 clip norm C.
        noise_seed: None (default) draws each client's noise from ``secrets``; an int
            makes runs reproducible, and anyone who knows it can remove the noise.
    """

    noise_multiplier: float
    clip: float = 1.0
    noise_seed: int | None = None
    privacy_mode: ClassVar[str] = "local"

    def __post_init__(self) -> None:
        check_gaussian(self.noise_multiplier, self.clip)

    def accountant(self, facts: RunFacts) -> Any:
        """Local DP's ledger: each client's own releases, without amplification."""
        return LocalDPAccountant(
            noise_multiplier=self.noise_multiplier,
            delta=facts.delta,
            max_epsilon=facts.max_epsilon,
            planned_rounds=facts.planned_rounds,
        )

    def init(self, params: Params) -> AggState:
        """Stateless."""
        return {}

    def encode(self, update: ClientUpdate, info: RoundInfo) -> ClientUpdate:
        """In the host: clip, then add the client's own Gaussian noise."""
        delta, _ = clip_to(update.delta, self.clip)
        rng = _noise_rng(self.noise_seed, info, update.client_id)
        sigma = self.noise_multiplier * self.clip
        noised = [
            (d + rng.normal(0.0, sigma, d.shape)).astype(d.dtype) if sigma > 0 else d for d in delta
        ]
        return replace(update, delta=noised, num_examples=1, metrics={})

    def finalize(
        self, total: PartialSum, state: AggState, rng: np.random.Generator
    ) -> tuple[Params, AggState, Metrics]:
        """The uniform mean of the noised updates (post-processing)."""
        count = len(total.client_ids)
        if count <= 0:
            raise ValueError(f"count must be > 0, got {count}")
        delta = [np.asarray(t, np.float64) / count for t in total.total]
        sigma = self.noise_multiplier * self.clip / math.sqrt(count)
        return delta, state, {"dp/clip": self.clip, "dp/noise_std": sigma}
