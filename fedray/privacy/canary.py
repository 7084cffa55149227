"""Canary clients: a one-shot, client-level empirical privacy estimate of a run.

Andrew, Chien, Song, Thakkar, Xu, Zhang et al., "One-shot Empirical Privacy Estimation
for Federated Learning", ICLR 2024, arXiv:2302.03098 (spec §4.3b of the privacy
notes). ``count`` canary clients each always submit one fixed random unit direction
c_i scaled to the clip norm, whatever the model; they are sampled like real clients
(Poisson, probability q each round) and enter the aggregator's sum before its noise.
``held_out`` further directions are never inserted. After training, the cosines of
θ_T - θ_0 with the inserted and held-out directions give the estimate
(:func:`~fedray.privacy.audit.canary_epsilon`).

Canaries change the trained model slightly: an audit run is its own run. They are
synthetic (no data), so they are never charged to the ledger. Layer 1: numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedray import tree
from fedray.records import ClientUpdate, Params, PartialSum, RoundInfo

CANARY_ID = -1000  # canary i has client id CANARY_ID - i: never a real client


@dataclass(frozen=True)
class CanaryAudit:
    """Inserts canary updates into a run's rounds and estimates ε from the result.

    Attributes:
        count: Canaries that may be inserted.
        held_out: Directions never inserted (the null distribution).
        sampling_rate: q, each canary's chance to take part in a round.
        seed: Seeds the directions and the canaries' participation.
        norm: The canaries' L2 norm when the aggregator has no DP clip.
    """

    count: int
    held_out: int
    sampling_rate: float
    seed: int = 0
    norm: float = 1.0

    def __post_init__(self) -> None:
        if self.count < 2 or self.held_out < 2:
            raise ValueError(
                f"canaries need count >= 2 and held_out >= 2, got {self.count}, {self.held_out}"
            )

    def direction(self, index: int, dim: int) -> np.ndarray:
        """Unit direction ``index`` (inserted: < count; held out: the rest)."""
        v = np.random.default_rng([self.seed, index, 31]).normal(size=dim)
        out: np.ndarray = v / np.linalg.norm(v)
        return out

    def participants(self, server_round: int) -> list[int]:
        """The canaries inserted in ``server_round`` (Poisson, like real clients)."""
        draws = np.random.default_rng([self.seed, server_round, 37]).random(self.count)
        return [int(i) for i in np.flatnonzero(draws < self.sampling_rate)]

    def inserted(
        self,
        aggregator: Any,
        params: Params,
        info: RoundInfo,
        updates: Sequence[ClientUpdate | PartialSum],
    ) -> list[ClientUpdate]:
        """This round's canaries, encoded by ``aggregator`` as a client's update would be.

        ``info`` carries the round's client settings (DP's clip norm, which the
        canaries sit at); each canary weighs as an average client of ``updates``.
        """
        clip = info.settings.get("dp_clip")
        norm = None if clip is None else float(clip) * (1 - 1e-6)  # at the clip, never above
        counts = [
            (u.num_examples, 1)
            if isinstance(u, ClientUpdate)
            else (u.num_examples, len(u.client_ids))
            for u in updates
        ]
        clients = sum(c for _, c in counts)
        examples = max(1, round(sum(n for n, _ in counts) / clients)) if clients else 1
        raw = self.updates(info.server_round, params, norm, examples)  # weighted as a client
        return [aggregator.encode(u, info) for u in raw]

    def updates(
        self, server_round: int, params: Params, norm: float | None, examples: int = 1
    ) -> list[ClientUpdate]:
        """This round's canary updates, shaped like ``params``, of norm ``norm``.

        ``examples`` is each canary's example count (the round's average client's, so
        an example-weighted mean weighs a canary like a typical client).
        """
        dim = int(sum(np.size(p) for p in params))
        scale = self.norm if norm is None else norm
        out = []
        for i in self.participants(server_round):
            delta = tree.unflatten_like(self.direction(i, dim) * scale, params)
            out.append(ClientUpdate(CANARY_ID - i, delta, examples))
        return out

    def estimate(self, initial: Params, final: Params, delta: float) -> dict[str, Any]:
        """Cosines of θ_T - θ_0 with each direction, and the ε estimate."""
        from fedray.privacy.audit import canary_epsilon

        move = np.concatenate(
            [
                np.ravel(np.asarray(f, np.float64) - np.asarray(i, np.float64))
                for i, f in zip(initial, final, strict=True)
            ]
        )
        length = float(np.linalg.norm(move)) or 1.0
        cos = np.array(
            [
                float(move @ self.direction(i, move.size)) / length
                for i in range(self.count + self.held_out)
            ]
        )
        return {
            **canary_epsilon(cos[: self.count], cos[self.count :], delta),
            "delta": delta,
            "cos_inserted_mean": float(cos[: self.count].mean()),
            "cos_held_out_mean": float(cos[self.count :].mean()),
            "dimension": int(move.size),
        }
