"""A fake executor whose hosts encode with the real aggregator, as ``ClientHost`` does."""

import numpy as np

from fedray.records import ClientFailure, ClientUpdate


class EncodingExecutor:
    """Client k's update is ``0.5 (t_k - w)``, encoded (clipped, noised) in its "host".

    ``flaky`` clients fail in attempt 0 of every round.
    """

    def __init__(self, aggregator, num_clients=6, dim=3, flaky=()):
        self.aggregator = aggregator
        self.targets = [np.full(dim, float(k), np.float32) for k in range(num_clients)]
        self.flaky = set(flaky)

    @property
    def num_clients(self):
        return len(self.targets)

    def initial_params(self):
        return [np.zeros_like(self.targets[0])]

    def broadcast(self, params, extras=None):
        return [np.array(p) for p in params]

    def fit(self, client_ids, params, info):
        for cid in client_ids:
            if cid in self.flaky and info.attempt == 0:
                yield ClientFailure(cid, "RuntimeError: flaky")
                continue
            delta = [0.5 * (self.targets[cid] - params[0])]
            yield self.aggregator.encode(ClientUpdate(cid, delta, 10, {"loss": 1.0}), info)

    def evaluate(self, params):
        return {}

    def evaluate_clients(self, client_ids, params, split="test"):
        return []

    def client_phase(self, client_ids, name, payload, info):
        return {}

    def client_state(self):
        return {}

    def restore_client_state(self, state):
        pass

    def close(self):
        pass
