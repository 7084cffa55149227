"""Top-k sparsification with error feedback.

Stich, Cordonnier & Jaggi, "Sparsified SGD with Memory", NeurIPS 2018,
arXiv:1809.07599; Karimireddy, Rebjock, Stich & Jaggi, "Error Feedback Fixes SignSGD
and other Gradient Compression Schemes", ICML 2019, arXiv:1901.09847.

Each client sends only the ``k = ceil(fraction * d)`` largest-magnitude coordinates of
``u = delta + e`` (its update plus its residual ``e``), and keeps ``e <- u - top_k(u)``
for its next round, so that nothing it computed is lost, only delayed. The residual is
the client's own raw update on the coordinates it did not send: it stays in its host
(saved there at checkpoints), and never reaches the driver.

The client half runs after training and before the aggregator's ``encode``, so a DP
clip and its noise come after it. On the wire a kept coordinate is a float32 value and
an int32 index: ``min(8k, 4d)`` bytes. There is no server half.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedray import tree
from fedray.features.base import Declaration, Feature, Trained
from fedray.records import Params


@dataclass(frozen=True)
class TopK(Feature):
    """The ``fraction`` largest coordinates of update + residual (``compression.topk``).

    Attributes:
        fraction: Share of the coordinates sent, in (0, 1].
        error_feedback: Keep what was not sent and add it to the next update.
    """

    fraction: float = 0.01
    error_feedback: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise ValueError(f"compression.topk must be in (0, 1], got {self.fraction}")

    def declaration(self) -> Declaration:
        """Keeps each client's residual (with error feedback)."""
        return Declaration(
            client_state=self.error_feedback, keys={"compression.topk": self.fraction}
        )

    def kept(self, dim: int) -> int:
        """k: coordinates sent of ``dim``."""
        return max(1, math.ceil(self.fraction * dim))

    def uplink_bytes(self, dim: int) -> int:
        """A float32 value and an int32 index per kept coordinate, at most the dense size."""
        return min(8 * self.kept(dim), 4 * dim)

    def client_update(
        self, trained: Trained, down: Params | None, state: Params
    ) -> tuple[Params, None, Params]:
        """Add the residual, keep the top k, keep the rest as the new residual.

        >>> f = TopK(fraction=0.25)
        >>> t = Trained(0, [np.array([-5.0, 0.1, 0.2, 0.3])], [], 1, 1.0, 1)
        >>> sent, _, residual = f.client_update(t, None, [])
        >>> sent[0].tolist(), residual[0].tolist()
        ([-5.0, 0.0, 0.0, 0.0], [0.0, 0.1, 0.2, 0.3])
        """
        delta = trained.delta
        flat = tree.flatten(delta)
        if state:
            flat = flat + tree.flatten(state)
        k = self.kept(flat.size)
        keep = np.argpartition(np.abs(flat), flat.size - k)[flat.size - k :]
        sparse = np.zeros_like(flat)
        sparse[keep] = flat[keep]
        out = tree.unflatten_like(sparse, delta)
        if not self.error_feedback:
            return out, None, []
        return out, None, tree.unflatten_like(flat - sparse, delta)
