"""Shared fakes: a numpy executor, a numpy trainer for real hosts, and a fake inner aggregator."""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedray.records import ClientEval, ClientFailure, ClientUpdate, RoundInfo


class QuadraticExecutor:
    """Client k pulls the model halfway towards its target t_k: delta = 0.5 (t_k - w).

    ``behaviour`` maps client id -> "fail" | "nan" | "shape" | "huge".
    """

    def __init__(self, targets, sizes, behaviour=None):
        self.targets = [np.asarray(t, np.float32) for t in targets]
        self.sizes = sizes
        self.behaviour = behaviour or {}
        self.broadcasts = 0
        self.fit_calls = []

    @property
    def num_clients(self):
        return len(self.targets)

    def initial_params(self):
        return [np.zeros_like(self.targets[0])]

    def broadcast(self, params, downs=None):
        self.broadcasts += 1
        out = [np.array(p) for p in params]
        for p in out:
            p.setflags(write=False)  # like Ray's object store
        return out

    def fit(self, client_ids: Sequence[int], params, info: RoundInfo):
        self.fit_calls.append((list(client_ids), info.server_round))
        out = []
        for cid in reversed(client_ids):  # arrival order must not matter
            kind = self.behaviour.get(cid)
            if kind == "fail" or (kind == "flaky" and info.attempt == 0):
                out.append(ClientFailure(cid, "RuntimeError: boom"))
                continue
            delta = [0.5 * (self.targets[cid] - params[0])]
            if kind == "nan":
                delta = [np.full_like(delta[0], np.nan)]
            elif kind == "shape":
                delta = [np.zeros(7, np.float32)]
            elif kind == "huge":
                delta = [np.full_like(delta[0], 3e38)]
            out.append(ClientUpdate(cid, delta, self.sizes[cid], {"loss": float(cid)}))
        return out

    def evaluate(self, params):
        return {"w": float(params[0][0])}

    def evaluate_clients(self, client_ids, params, split="test"):
        offset = 0.0 if split == "test" else 100.0
        return [ClientEval(c, 1, {"w": float(params[0][0]) + offset}) for c in client_ids]

    def save_client_state(self, server_round):
        return 0

    def load_client_state(self, server_round):
        return 0

    def prune_client_state(self, server_round):
        pass

    def close(self):
        pass


@dataclass(frozen=True)
class SumPlusOne:
    """A trivial inner aggregator (the TFF testing trick): sum of deltas plus one."""

    def init(self, params):
        return {"calls": 0}

    def encode(self, update, info):
        return ClientUpdate(update.client_id, update.delta, update.num_examples, {"encoded": 1.0})

    def aggregate(self, updates, state, rng):
        total = [sum(u.delta[i] for u in updates) + 1 for i in range(len(updates[0].delta))]
        return total, {"calls": state["calls"] + 1}, {"inner": 7.0}


class NumpyTrainer:
    """Linear regression in numpy, with the step pieces of the Keras trainer.

    A drop-in :class:`fedray.client.trainer.Trainer` for real hosts, so the whole
    stack (config, build, loop, executor, host, aggregators) runs without TensorFlow.
    Params are a ``Dense(1)``'s: ``[W (d, 1), b (1,)]``. Minibatch SGD on the MSE, shuffled
    by the job's seed; FedProx's ``mu (w - w_global)``, the features' gradient offset, and
    DP-SGD's Poisson batches with per-example clipping and Gaussian noise, seeded by
    the job's noise seed.
    """

    EVAL_BATCH = 8  # small, so that a linreg test set of 20 rows has parts of whole batches

    def __init__(self, spec, data):
        self.spec = spec
        c = spec.train
        self.lr, self.batch, self.epochs = c.learning_rate, c.batch_size, c.local_epochs
        self.shards = {
            cid: (s.x.astype(np.float64), s.y.reshape(len(s.y), -1).astype(np.float64))
            for cid, s in data.shards.items()
        }
        self.local_test = {
            cid: (s.x_test, s.y_test) for cid, s in data.shards.items() if len(s.x_test)
        }
        self.server = None if data.x_test is None else (data.x_test, data.y_test)
        self.dim = data.info.input_shape[0]

    def describe(self):
        batches = 0 if self.server is None else -(-len(self.server[0]) // self.EVAL_BATCH)
        return {"trainer": "numpy", "server_parts": batches}

    def server_states(self, params, part, of):
        from fedray.records import MeanStates, batch_range

        if self.server is None:
            return None
        x, y = self.server
        err = ((x @ params[0] + params[1] - y.reshape(len(y), -1)) ** 2).mean(axis=1)
        lo, hi = batch_range(-(-len(x) // self.EVAL_BATCH), part, of)
        rows = [err[b * self.EVAL_BATCH : (b + 1) * self.EVAL_BATCH] for b in range(lo, hi)]
        totals = np.array([[r.sum()] for r in rows]).reshape(-1, 1)
        counts = np.array([[float(len(r))] for r in rows]).reshape(-1, 1)
        return MeanStates(("loss",), lo, totals, counts)

    def initial_params(self):
        rng = np.random.default_rng(self.spec.seed)
        return [rng.normal(0, 0.1, (self.dim, 1)).astype(np.float32), np.zeros(1, np.float32)]

    @staticmethod
    def _grads(x, y, w, b):
        """Per-example gradients of the squared error: (n, d, 1) and (n, 1)."""
        err = x @ w + b - y  # (n, 1)
        return 2 * x[:, :, None] * err[:, None, :], 2 * err

    def _gradient(self, x, y, w, b, noise):
        """The minibatch gradient; DP-SGD's is clipped per example and noised."""
        dp = self.spec.client.dp_sgd
        gw, gb = self._grads(x, y, w, b)
        if dp is None:
            return gw.mean(0), gb.mean(0)
        norms = np.sqrt((gw**2).sum((1, 2)) + (gb**2).sum(1))
        keep = np.isfinite(norms)  # an example whose gradient is not finite counts for none
        gw, gb = np.where(keep[:, None, None], gw, 0.0), np.where(keep[:, None], gb, 0.0)
        scale = np.where(keep, np.minimum(1.0, dp.clip / (np.where(keep, norms, 0) + 1e-12)), 0)
        sd = dp.noise_multiplier * dp.clip
        gw = (np.tensordot(scale, gw, 1) + noise.normal(0, sd, w.shape)) / self.batch
        gb = (np.tensordot(scale, gb, 1) + noise.normal(0, sd, b.shape)) / self.batch
        return gw, gb

    def _train_one(self, job, params):
        client = self.spec.client
        x, y = self.shards[job.cid]
        if job.null:  # none of the client's data: zeros, and no example in a DP batch
            x, y = np.zeros_like(x), np.zeros_like(y)
        w0, b0 = (p.astype(np.float64) for p in params)
        w, b = w0.copy(), b0.copy()
        n, steps, losses = len(x), 0, []
        noise = np.random.default_rng(job.noise_seed.tolist())
        for epoch in range(self.epochs):
            order = np.random.default_rng([*job.seed.tolist(), epoch]).permutation(n)
            for i in range(-(-n // self.batch)):
                if steps >= job.steps:
                    break
                steps += 1
                if client.dp_sgd is not None:  # a secret Poisson batch
                    idx = np.flatnonzero(noise.random(n) < min(1.0, self.batch / n))
                    idx = idx[:0] if job.null else idx
                else:
                    idx = order[i * self.batch : (i + 1) * self.batch]
                gw, gb = self._gradient(x[idx], y[idx], w, b, noise)
                losses.append(float(np.mean((x[idx] @ w + b - y[idx]) ** 2)) if len(idx) else 0)
                mu = self.spec.objective.proximal
                gw, gb = gw + mu * (w - w0), gb + mu * (b - b0)
                if job.offset is not None:
                    gw, gb = gw + job.offset[0], gb + job.offset[1]
                w, b = w - self.lr * gw, b - self.lr * gb
        delta = [(w - w0).astype(np.float32), (b - b0).astype(np.float32)]
        return delta, {"loss": float(np.mean(losses)) if losses else 0.0}

    def train(self, jobs, params):
        return [self._train_one(job, params) for job in jobs]

    def evaluate(self, params, split, cid=None):
        if split == "server":
            data = self.server
        elif split == "test":
            data = self.local_test.get(cid)
        else:
            data = self.shards.get(cid)
        if data is None or not len(data[0]):
            return None
        x, y = data
        pred = x @ params[0] + params[1]
        return len(x), {"loss": float(np.mean((pred - y.reshape(len(y), -1)) ** 2))}

    def predict(self, params, x):
        return np.asarray(x, np.float32) @ params[0] + params[1]

    def export(self, params):
        return b"numpy-trainer:" + b"".join(np.asarray(p).tobytes() for p in params)
