"""Features: algorithms with a client half and a server half (:mod:`fedray.features.base`).

Built in: :class:`FedProx`, :class:`Scaffold` and :class:`TopK`. A user's algorithm
subclasses :class:`Feature` and goes in ``Strategy(features=(...))``; nothing in fedray
needs to change for it (``examples/algorithms/`` has FedDyn, FedNova and q-FFL).
"""

from fedray.features.base import (
    ClientReport,
    Declaration,
    Feature,
    FeatureState,
    LocalObjective,
    RoundFacts,
    RunShape,
    Trained,
    check_features,
)
from fedray.features.fedprox import FedProx
from fedray.features.scaffold import Scaffold
from fedray.features.topk import TopK

__all__ = [
    "ClientReport",
    "Declaration",
    "Feature",
    "FeatureState",
    "FedProx",
    "LocalObjective",
    "RoundFacts",
    "RunShape",
    "Scaffold",
    "TopK",
    "Trained",
    "check_features",
]
