"""Differential privacy accounting (pure math; dp-accounting is imported lazily).

The DP mechanisms themselves are aggregators: :mod:`fedray.aggregators.dp`.
"""

from fedray.privacy.accounting import (
    RoundEvent,
    calibrate_noise_multiplier,
    combined_multiplier,
    compose_epsilon,
    dpfedavg_epsilon,
    round_event,
    split_noise,
)
from fedray.privacy.distributed import DistributedPlan, distributed_epsilon
from fedray.privacy.dpsgd import DPSGD, DPSGDAccountant, poisson_batch_cap, truncation_probability
from fedray.privacy.ledgers import DistributedDPAccountant, DPFedAvgAccountant, LocalDPAccountant

__all__ = [
    "DPSGD",
    "DPFedAvgAccountant",
    "DPSGDAccountant",
    "DistributedDPAccountant",
    "DistributedPlan",
    "LocalDPAccountant",
    "RoundEvent",
    "calibrate_noise_multiplier",
    "combined_multiplier",
    "compose_epsilon",
    "distributed_epsilon",
    "dpfedavg_epsilon",
    "poisson_batch_cap",
    "round_event",
    "split_noise",
    "truncation_probability",
]
