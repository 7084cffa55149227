"""Differential privacy accounting (pure math; dp-accounting is imported lazily).

The DP mechanisms themselves are aggregators: :mod:`fedray.aggregators.dp`.
"""

from fedray.privacy.accounting import (
    DPFedAvgAccountant,
    DPSGDAccountant,
    LocalDPAccountant,
    calibrate_noise_multiplier,
    dpfedavg_epsilon,
)

__all__ = [
    "DPFedAvgAccountant",
    "DPSGDAccountant",
    "LocalDPAccountant",
    "calibrate_noise_multiplier",
    "dpfedavg_epsilon",
]
