"""The client host: a plain class that owns clients' data shards and one compiled model.

It is made remote at the edge (``ray.remote(ClientHost)`` in :mod:`fedray.runtime`)
and used in-process by :class:`fedray.local.LocalExecutor`, so it is testable
without Ray. One host serves one or many clients, one after another, on the same
compiled Keras model:

1. ``__init__``: cap TensorFlow's thread pools to the host's CPU share (before TF
   starts), load the shards, build and compile the model once, and cache each
   client's data as a ``tf.data`` pipeline of in-memory tensors.
2. ``fit``: for each client, ``set_weights(global)``, restore the optimizer's
   initial slot state (never the learning rate), ``fit`` on the cached pipeline,
   and return ``local - global`` through the aggregator's ``encode``.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedray.aggregators import Aggregator
from fedray.config import Config
from fedray.records import ClientEval, ClientFailure, ClientUpdate, Metrics, Params, RoundInfo

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HostSpec:
    """Everything a host needs to start: the config and the clients it serves.

    Attributes:
        config: The validated run config.
        client_ids: Global ids of the clients this host owns.
        aggregator: The strategy's aggregator, whose ``encode`` runs here.
        with_test_set: Hold the server test set for centralized evaluation.
        threads: TensorFlow intra/inter-op threads for this host.
    """

    config: Config
    client_ids: tuple[int, ...]
    aggregator: Aggregator
    with_test_set: bool = False
    threads: int = 1


def configure_tensorflow(threads: int, *, verbose: bool) -> None:
    """Set TF's thread pools and log level; must run before TF's first op."""
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" not in sys.modules:
        os.environ["TF_NUM_INTRAOP_THREADS"] = str(threads)
        os.environ["TF_NUM_INTEROP_THREADS"] = str(threads)
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        pass  # TF already running in this process (in-process executor): keep its pools
    if not verbose:
        tf.get_logger().setLevel(logging.ERROR)
        import warnings

        warnings.filterwarnings("ignore", module="keras")


class ClientHost:
    """Owns the shards of ``spec.client_ids`` and one compiled model."""

    def __init__(self, spec: HostSpec) -> None:
        self.spec = spec
        self._error: BaseException | None = None
        try:
            self._setup(spec)
        except Exception as exc:  # delivered by ready(), so the caller gets the real error
            self._error = exc

    def _setup(self, spec: HostSpec) -> None:
        t0 = time.perf_counter()
        cfg = spec.config
        configure_tensorflow(spec.threads, verbose=cfg.runtime.verbose)
        import keras
        import tensorflow as tf

        from fedray.data import load_host_data
        from fedray.models import build_model

        self._tf = tf
        host_data = load_host_data(
            cfg.data, cfg.seed, spec.client_ids, with_test_set=spec.with_test_set
        )
        self.info = host_data.info
        self.shards = host_data.shards
        keras.utils.set_random_seed(cfg.seed)
        self.model = build_model(cfg.model, cfg.client, self.info)
        self.model.optimizer.build(self.model.trainable_variables)
        self._opt_init = [np.array(v.numpy()) for v in self.model.optimizer.variables]
        self._opt_skip = {
            i for i, v in enumerate(self.model.optimizer.variables) if "learning_rate" in v.path
        }
        batch = cfg.client.batch_size
        self._train: dict[int, Any] = {}
        self._test: dict[int, Any] = {}
        for cid, shard in self.shards.items():
            self._train[cid] = tf.data.Dataset.from_tensor_slices((shard.x, shard.y))
            if len(shard.x_test):
                self._test[cid] = (
                    tf.data.Dataset.from_tensor_slices((shard.x_test, shard.y_test))
                    .batch(max(batch, 256))
                    .prefetch(2)
                )
        self._server_test = None
        if host_data.x_test is not None and len(host_data.x_test):
            self._server_test = (
                tf.data.Dataset.from_tensor_slices((host_data.x_test, host_data.y_test))
                .batch(max(batch, 256))
                .prefetch(2)
            )
        self.setup_s = time.perf_counter() - t0

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def ready(self) -> dict[str, Any]:
        """Raise the start-up error, if any; else describe the host."""
        self._check()
        return {
            "pid": os.getpid(),
            "clients": list(self.spec.client_ids),
            "examples": {cid: len(s.x) for cid, s in self.shards.items()},
            "threads": self.spec.threads,
            "tf_intra_op_threads": self._tf.config.threading.get_intra_op_parallelism_threads(),
            "tf_inter_op_threads": self._tf.config.threading.get_inter_op_parallelism_threads(),
            "setup_s": self.setup_s,
        }

    def initial_params(self) -> Params:
        """The freshly initialised model's weights (identical on every host: same seed)."""
        self._check()
        return [np.asarray(w) for w in self.model.get_weights()]

    def _set(self, params: Params) -> None:
        self.model.set_weights(params)

    def _reset_optimizer(self) -> None:
        for i, (v, init) in enumerate(
            zip(self.model.optimizer.variables, self._opt_init, strict=True)
        ):
            if i not in self._opt_skip:
                v.assign(init)

    def _pipeline(self, cid: int, info: RoundInfo) -> Any:
        """The client's cached tensors, shuffled with a seed derived from (seed, round, id).

        Deriving the order from the round (not from how often this host trained before)
        keeps results identical whether clients are packed or dedicated, and on resume.
        """
        seed = int(np.random.SeedSequence([info.seed, info.server_round, cid]).generate_state(1)[0])
        n = len(self.shards[cid].x)
        batch = self.spec.config.client.batch_size
        return self._train[cid].shuffle(n, seed=seed).batch(batch).prefetch(2)

    def fit(
        self, client_ids: Sequence[int], params: Params, info: RoundInfo
    ) -> list[ClientUpdate | ClientFailure]:
        """Train each client from ``params``; a client that raises becomes a ClientFailure."""
        self._check()
        results: list[ClientUpdate | ClientFailure] = []
        epochs = self.spec.config.client.local_epochs
        for cid in client_ids:
            try:
                if cid not in self._train:
                    raise KeyError(f"client {cid} is not hosted here ({list(self._train)})")
                self._set(params)
                self._reset_optimizer()
                hist = self.model.fit(self._pipeline(cid, info), epochs=epochs, verbose=0)
                new = self.model.get_weights()
                delta = [np.subtract(n, p, dtype=p.dtype) for n, p in zip(new, params, strict=True)]
                metrics = {k: float(v[-1]) for k, v in hist.history.items()}
                update = ClientUpdate(cid, delta, len(self.shards[cid].x), metrics)
                results.append(self.spec.aggregator.encode(update, info))
            except Exception as exc:
                results.append(ClientFailure(cid, f"{type(exc).__name__}: {exc}"))
        return results

    def _evaluate(self, ds: Any) -> Metrics:
        out = self.model.evaluate(ds, verbose=0, return_dict=True)
        return {k: float(v) for k, v in out.items()}

    def evaluate(self, params: Params) -> Metrics:
        """Centralized evaluation on the server test set held by this host."""
        self._check()
        if self._server_test is None:
            return {}
        self._set(params)
        return self._evaluate(self._server_test)

    def evaluate_clients(
        self, client_ids: Sequence[int], params: Params
    ) -> list[ClientEval | ClientFailure]:
        """Evaluate ``params`` on each client's local test split (skips clients without one)."""
        self._check()
        self._set(params)
        out: list[ClientEval | ClientFailure] = []
        for cid in client_ids:
            if cid not in self._test:
                continue
            try:
                n = len(self.shards[cid].x_test)
                out.append(ClientEval(cid, n, self._evaluate(self._test[cid])))
            except Exception as exc:
                out.append(ClientFailure(cid, f"{type(exc).__name__}: {exc}"))
        return out

    def predict(self, params: Params, x: np.ndarray) -> np.ndarray:
        """The model's predictions for ``x`` under ``params``."""
        self._check()
        self._set(params)
        return np.asarray(self.model.predict(np.asarray(x, np.float32), verbose=0))

    def export(self, params: Params) -> bytes:
        """The model with ``params`` as ``.keras`` file bytes (so the driver needs no TF)."""
        self._check()
        self._set(params)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.keras"
            self.model.save(path)
            return path.read_bytes()


def group_clients(num_clients: int, clients_per_host: int) -> list[tuple[int, ...]]:
    """Assign client ids to hosts in contiguous blocks of ``clients_per_host``.

    >>> group_clients(5, 2)
    [(0, 1), (2, 3), (4,)]
    """
    if clients_per_host < 1:
        raise ValueError(f"clients_per_host must be >= 1, got {clients_per_host}")
    return [
        tuple(range(s, min(s + clients_per_host, num_clients)))
        for s in range(0, num_clients, clients_per_host)
    ]
