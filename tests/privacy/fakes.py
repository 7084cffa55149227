"""A fake executor whose hosts encode with the real aggregator, as ``ClientHost`` does."""

import numpy as np

from fedray.records import ClientFailure, ClientUpdate
from tests.fakes import QuadraticExecutor


class EncodingExecutor(QuadraticExecutor):
    """Client k's update is ``0.5 (k - w)``, encoded (clipped, noised) in its "host".

    ``flaky`` clients fail in attempt 0 of every round.
    """

    def __init__(self, aggregator, num_clients=6, dim=3, flaky=()):
        super().__init__([np.full(dim, float(k)) for k in range(num_clients)], [10] * num_clients)
        self.aggregator = aggregator
        self.flaky = set(flaky)

    def fit(self, client_ids, params, info):
        for cid in client_ids:
            if cid in self.flaky and info.attempt == 0:
                yield ClientFailure(cid, "RuntimeError: flaky")
                continue
            delta = [0.5 * (self.targets[cid] - params[0])]
            yield self.aggregator.encode(ClientUpdate(cid, delta, 10, {"loss": 1.0}), info)

    def evaluate_clients(self, client_ids, params, split="test"):
        return []

    def call(self, client_ids, name, payload, info):
        return {}
