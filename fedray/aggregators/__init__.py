"""Aggregators: pure-numpy rules that turn client updates into one delta."""

from fedray.aggregators.base import Aggregator, LinearAggregator, client_settings
from fedray.aggregators.clip import NormBound, clip_update
from fedray.aggregators.distributed_dp import DistributedDP
from fedray.aggregators.dp import AdaptiveClip, CentralDP, FixedClip, LocalDP
from fedray.aggregators.mean import Mean, weighted_mean
from fedray.aggregators.presum import combine, presum
from fedray.aggregators.robust import Krum, Median, TrimmedMean
from fedray.aggregators.secure import SecureAggregation
from fedray.aggregators.staleness import StalenessWeighted, staleness_weight

__all__ = [
    "AdaptiveClip",
    "Aggregator",
    "CentralDP",
    "DistributedDP",
    "FixedClip",
    "Krum",
    "LinearAggregator",
    "LocalDP",
    "Mean",
    "Median",
    "NormBound",
    "SecureAggregation",
    "StalenessWeighted",
    "TrimmedMean",
    "client_settings",
    "clip_update",
    "combine",
    "presum",
    "staleness_weight",
    "weighted_mean",
]
