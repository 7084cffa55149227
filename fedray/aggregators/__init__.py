"""Aggregators: pure-numpy rules that turn client updates into one delta."""

from fedray.aggregators.base import Aggregator
from fedray.aggregators.mean import Mean, weighted_mean

__all__ = ["Aggregator", "Mean", "weighted_mean"]
