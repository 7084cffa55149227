"""The ``privacy`` section of a run configuration: DP, secure aggregation, canaries."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from fedray.config.sections import _Section


class DPConfig(_Section):
    """Client-level differential privacy (see the README's Privacy section)."""

    mode: Literal["central", "local", "dpsgd", "distributed"] = "central"
    """`central`: the server clips and noises the mean (DP-FedAvg); `local`: each client noises its
    own update; `dpsgd`: example-level DP-SGD inside each client; `distributed`: each client adds
    its share of integer noise inside secure aggregation, so the server never sees an un-noised sum
    """
    mechanism: Literal["skellam", "discrete_gaussian"] = "skellam"
    """distributed DP's integer noise: Skellam (Agarwal et al. 2021) or the discrete Gaussian
    (Kairouz et al. 2021)
    """
    max_dropout: float = Field(0.1, ge=0, lt=1)
    """distributed DP: the worst-case fraction of a cohort that may drop out; each client's share
    is scaled so that the rest still carry the whole noise, and rounds with fewer survivors abort
    before unmasking
    """
    noise_multiplier: float | None = Field(None, ge=0)
    """z: noise std over the clip norm (give this or `target_epsilon`; neither when a
    hand-composed strategy holds the DP mechanism, whose δ this section then gives)
    """
    target_epsilon: float | None = Field(None, gt=0)
    """calibrate z so that the whole run spends this ε"""
    max_epsilon: float | None = Field(None, gt=0)
    """stop before a round that would spend more than this ε"""
    delta: float | None = Field(None, gt=0, lt=1)
    """δ of the (ε, δ) guarantee; required, well below 1 / num_clients"""
    clip: Annotated[float, Field(gt=0)] | Literal["adaptive"] = 1.0
    """L2 clip norm C of each update, or `adaptive` (Andrew et al. 2021; central DP only)"""
    initial_clip: float = Field(0.1, gt=0)
    """adaptive clipping: the first round's C"""
    target_quantile: float = Field(0.5, gt=0, lt=1)
    """adaptive clipping: the fraction of updates left unclipped"""
    clip_learning_rate: float = Field(0.2, gt=0)
    """adaptive clipping: the geometric step of C per round"""
    count_stddev: float | None = Field(None, gt=0)
    """adaptive clipping: σ_b of the noised unclipped count (default m / 20)"""
    sampling: Literal["poisson", "fixed"] = "poisson"
    """`poisson`: each client joins with probability q (what the accountant assumes); `fixed`:
    exactly K
    """
    noise_seed: int | None = Field(None, ge=0)
    """fix the noise (reproducible tests only: the noise is then predictable)"""

    @model_validator(mode="after")
    def _checks(self) -> DPConfig:
        if self.delta is None:
            raise ValueError(
                "privacy.dp.delta is required: the δ of the (ε, δ) guarantee, well below "
                "1 / number of clients (e.g. 1e-5)"
            )
        if self.noise_multiplier is not None and self.target_epsilon is not None:
            raise ValueError(
                "privacy.dp needs one of noise_multiplier (z >= 0) or target_epsilon, not both "
                f"(got noise_multiplier={self.noise_multiplier}, "
                f"target_epsilon={self.target_epsilon}); a strategy that holds its own DP "
                "mechanism needs neither"
            )
        if self.mode != "central" and self.clip == "adaptive":
            raise ValueError("privacy.dp.clip = 'adaptive' needs privacy.dp.mode = 'central'")
        if self.mode == "distributed" and self.target_epsilon is not None:
            raise ValueError(
                "privacy.dp.target_epsilon is not supported with privacy.dp.mode = 'distributed' "
                "(its ε depends on the model's size); set privacy.dp.noise_multiplier: the "
                "run's summary.json and privacy/epsilon report the ε spent"
            )
        if self.mode == "dpsgd" and self.target_epsilon is not None:
            raise ValueError(
                "privacy.dp.target_epsilon is not supported with privacy.dp.mode = 'dpsgd' "
                "(each client's ε depends on its shard size); set privacy.dp.noise_multiplier "
                "and use `fedray privacy` with q = batch_size / examples to choose it"
            )
        return self


class SecureAggregationConfig(_Section):
    """SecAgg / SecAgg+ (see the README's Privacy section).

    ``clip`` defaults to DP's clip under central DP and to 8.0 otherwise (Flower's
    SecAgg+ clipping range); ``bits`` defaults to 22 (Flower's quantization range
    2^22). A round with fewer than ``min_clients`` sampled or surviving clients aborts
    before anything is unmasked.
    """

    enabled: bool = False
    """SecAgg / SecAgg+: the server sees only the sum of masked, quantized updates"""
    bits: int = Field(22, ge=1, le=40)
    """quantization bits per coordinate"""
    clip: float | None = Field(None, gt=0)
    """L2 clip of each update in the host, also the quantization range (default: DP's clip, else
    8.0)
    """
    neighbours: int | Literal["auto", "all"] = "auto"
    """SecAgg+ neighbours per client (`auto`: 2⌈log₂ n⌉ + 2; `all`: plain SecAgg)"""
    threshold: float = Field(0.6, gt=0.5, le=1.0)
    """fraction of a neighbourhood needed to unmask"""
    min_clients: int = Field(3, ge=1)
    """the smallest cohort whose sum is revealed; smaller rounds abort before unmasking"""


class CanaryConfig(_Section):
    """Canary clients for a client-level empirical ε estimate (``summary.json``)."""

    count: int = Field(0, ge=0)
    """canary clients for a client-level empirical ε estimate (`summary.json`); 0: off"""
    held_out: int | None = Field(None, ge=2)
    """canaries never inserted, the null distribution (default: `count`)"""
    norm: float = Field(1.0, gt=0)
    """L2 norm of each canary update (at most the DP clip)"""

    @model_validator(mode="after")
    def _checks(self) -> CanaryConfig:
        if self.count == 1:
            raise ValueError("privacy.canaries.count must be 0 (off) or >= 2, got 1")
        return self


class PrivacyConfig(_Section):
    """Privacy mechanisms; unset means none."""

    dp: DPConfig | None = None
    secure_aggregation: SecureAggregationConfig = SecureAggregationConfig()
    canaries: CanaryConfig = CanaryConfig()
