"""Encoding float updates as integers mod 2^r so that masked sums decode exactly.

Each coordinate is clipped to [-c, c] (an L2 clip to C already bounds it by C), mapped
to [0, 2^b - 1] and rounded stochastically (unbiased: E[q] = u). With n clients the
integer sum is at most n (2^b - 1), so a modulus 2^r with r = b + ceil(log2(n + 1))
never wraps, and the sum decodes exactly: sum x = z 2c / (2^b - 1) - n c. The error
per coordinate is at most n steps (step = 2c / (2^b - 1)) and about sqrt(n) / 2 typically.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Quantizer:
    """b-bit stochastic quantization of values in [-clip, clip].

    Attributes:
        clip: c, the per-coordinate range.
        bits: b, bits per coordinate (1..40).
    """

    clip: float = 1.0
    bits: int = 16

    def __post_init__(self) -> None:
        if not self.clip > 0:
            raise ValueError(f"clip must be > 0, got {self.clip}")
        if not 1 <= self.bits <= 40:
            raise ValueError(f"bits must be in [1, 40], got {self.bits}")

    @property
    def step(self) -> float:
        """The value of one quantization level."""
        return float(2 * self.clip / (2**self.bits - 1))

    def modulus_bits(self, max_clients: int) -> int:
        """R such that the sum of ``max_clients`` encodings never wraps mod 2^r (<= 62)."""
        r = self.bits + math.ceil(math.log2(max_clients + 1))
        if r > 62:
            raise ValueError(f"{max_clients} clients at {self.bits} bits need 2^{r} > 2^62")
        return r

    def encode(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Stochastically rounded levels (uint64) of ``x`` (any shape, flattened)."""
        u = (np.clip(x.astype(np.float64).ravel(), -self.clip, self.clip) + self.clip) / self.step
        low = np.floor(u)
        return (low + (rng.random(u.shape) < (u - low))).astype(np.uint64)

    def decode_sum(self, total: np.ndarray, count: int) -> np.ndarray:
        """The float sum of ``count`` encoded vectors from their integer sum."""
        return total.astype(np.float64) * self.step - count * self.clip
